//go:build tools

// Keeps promtool's package in the module graph for `go mod tidy`.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
