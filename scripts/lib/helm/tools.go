//go:build tools

// Keeps helm's command package in the module graph for `go mod tidy`.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
