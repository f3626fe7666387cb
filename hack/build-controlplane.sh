#!/bin/sh
# Build (or reuse) kube-apiserver and etcd from the Go modules in hack/, keyed by
# the versions in hack/controlplane/go.mod and hack/etcd/go.mod, into
# ~/.cache/kubegate/controlplane/<k8s>-etcd<etcd>/. Honours KUBEBUILDER_ASSETS.
set -eu
cd "$(dirname "$0")/.."
exec python3 -m kubegate.gobuild
