//go:build tools

// The NetworkPolicy enforcer of `kubegate dev-cluster up --node` (TEST ONLY:
// kube-router runs with only its firewall on). The binary is upstream's
// cmd/kube-router, built with `go build github.com/cloudnativelabs/kube-router/v2/cmd/kube-router`
// from this module, which only pins the version.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
