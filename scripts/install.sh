#!/usr/bin/env bash
# Installs everything kubegate's tests and benchmarks need on a bare Debian machine:
# Debian packages, the Python package with its test and bench extras, and the local control
# plane (kube-apiserver + etcd built from pinned Go modules, cached in ~/.cache/kubegate).
# Idempotent: a warm machine skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--python-only" ]; then
  python3 -m pip install -q -e . ; exit 0
fi

need_apt=()
# The node cluster and the image (tests/cluster): podman + runc build the image, containerd +
# runc + the CNI plugins run pods, iptables/ipset/conntrack serve kube-proxy and kube-router,
# debootstrap makes the base image (no registry is needed).
for pair in redis-server:redis-server wrk:wrk nginx:nginx haproxy:haproxy lua5.4:lua5.4 promtool:prometheus \
            openssl:openssl curl:curl podman:podman runc:runc containerd:containerd \
            /usr/lib/cni/bridge:containernetworking-plugins iptables:iptables ipset:ipset \
            conntrack:conntrack debootstrap:debootstrap unshare:util-linux; do
  tool="${pair%%:*}"
  if [ "${tool#/}" != "$tool" ]; then [ -x "$tool" ] && continue; else command -v "$tool" >/dev/null 2>&1 && continue; fi
  need_apt+=("${pair##*:}")
done
if ((${#need_apt[@]})); then
  echo "install: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The nginx and prometheus packages start system services we don't want running.
  for svc in nginx haproxy prometheus prometheus-node-exporter; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
fi

python3 -m pip install -q -e '.[test,bench]'  # bench: bench/peers.py's Traefik and Caddy (its smoke test)

command -v kubectl >/dev/null 2>&1 || { echo "install: kubectl is missing (expected in the machine image)" >&2; exit 1; }
# Build (or reuse) the pinned control plane (about 6 min cold), with visible progress.
./hack/build-controlplane.sh
# Build (or reuse) the pinned helm for the chart tests (about 5 min cold).
./hack/build-helm.sh >/dev/null
# The node cluster's binaries (kubelet, kube-proxy, kube-controller-manager, kube-scheduler from
# the same module; CoreDNS; kube-router, test only) and the images it runs.
python3 -m kubegate.nodecluster --build
# Jaeger all-in-one (pinned in hack/jaeger/go.mod; about 5 min cold), the real OTLP receiver the
# tracing tests query; cached in ~/.cache/kubegate/tools/ by the module's hash, so a warm run is instant.
python3 -c 'from kubegate.gobuild import go_tool; print("install: jaeger at", go_tool("jaeger", package="github.com/jaegertracing/jaeger/cmd/jaeger"))'
