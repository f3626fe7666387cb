#!/bin/sh
# Refresh the files the Helm charts carry verbatim (Helm cannot read outside a
# chart): the CRDs of crds/ into charts/kubegate/crds/ and charts/kubegate-crds/files/,
# and the PrometheusRule and Grafana dashboard of manifests/monitoring/ into
# charts/kubegate/files/. Run it after `python3 -m kubegate.crdgen` or after editing
# manifests/monitoring/; tests/deploy/test_helm.py fails while a copy is stale.
set -eu
cd "$(dirname "$0")/.."
for dir in charts/kubegate/crds charts/kubegate-crds/files; do
  mkdir -p "$dir"
  rm -f "$dir"/*.yaml
  grep -rl --include='*.yaml' '^kind: CustomResourceDefinition' crds/ | while read -r crd; do
    cp "$crd" "$dir/$(basename "$crd")"
  done
done
cp manifests/monitoring/prometheusrule.yaml manifests/monitoring/dashboard.json charts/kubegate/files/
