// promql-names reads PromQL expressions as a JSON array of {"source": ..., "expr": ...}
// on stdin and writes, for each, the metric names its selectors use and each selector's
// label matchers (parsed with Prometheus's own PromQL parser, so label names, functions and
// keywords are never mistaken for metrics) or the parse error, as a JSON array on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type input struct {
	Source string `json:"source"`
	Expr   string `json:"expr"`
}

type matcher struct {
	Label string `json:"label"`
	Op    string `json:"op"`
	Value string `json:"value"`
}

type selector struct {
	Name     string    `json:"name"`
	Matchers []matcher `json:"matchers"`
}

type output struct {
	Source    string     `json:"source"`
	Expr      string     `json:"expr"`
	Names     []string   `json:"names"`
	Selectors []selector `json:"selectors"`
	// Selectors without a fixed metric name (a regex on __name__, or none at all).
	Unnamed []string `json:"unnamed,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func main() {
	var inputs []input
	if err := json.NewDecoder(os.Stdin).Decode(&inputs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names: reading stdin:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	outputs := make([]output, 0, len(inputs))
	for _, in := range inputs {
		out := output{Source: in.Source, Expr: in.Expr, Names: []string{}, Selectors: []selector{}}
		expr, err := p.ParseExpr(in.Expr)
		if err != nil {
			out.Error = err.Error()
			outputs = append(outputs, out)
			continue
		}
		seen := map[string]bool{}
		parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
			vs, ok := node.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
						name = m.Value
					}
				}
			}
			if name == "" {
				out.Unnamed = append(out.Unnamed, vs.String())
				return nil
			}
			sel := selector{Name: name, Matchers: []matcher{}}
			for _, m := range vs.LabelMatchers {
				if m.Name != labels.MetricName {
					sel.Matchers = append(sel.Matchers, matcher{Label: m.Name, Op: m.Type.String(), Value: m.Value})
				}
			}
			out.Selectors = append(out.Selectors, sel)
			if !seen[name] {
				seen[name] = true
				out.Names = append(out.Names, name)
			}
			return nil
		})
		sort.Strings(out.Names)
		outputs = append(outputs, out)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(outputs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names:", err)
		os.Exit(2)
	}
}
