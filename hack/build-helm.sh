#!/bin/sh
# Build (or reuse) the real helm at the version hack/helm/go.mod pins (its `tool`
# line; bump with `cd hack/helm && go get -tool helm.sh/helm/v3/cmd/helm@vX.Y.Z`),
# into ~/.cache/kubegate/tools/helm-<version>; prints the binary's path.
set -eu
cd "$(dirname "$0")/.."
exec python3 -m kubegate.gobuild helm
