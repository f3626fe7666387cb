# The two commands of the README. `make run` starts a local gateway on the
# examples (no cluster, in-memory rate limits); `make test` installs
# everything (apt, pip, the Go-built control plane) and runs the whole suite.
.PHONY: run test install lint crds bench image

run:
	./scripts/install.sh --python-only
	kubegate run -f examples/ --demo-backends

install:
	./scripts/install.sh

test: install
	python3 -m pytest

lint:
	ruff check .

crds:
	python3 -m kubegate.crdgen

# The image, built from the Dockerfile with podman + runc on a Debian base made
# locally (no registry), tagged localhost/kubegate:dev; loaded into the node's
# containerd when `kubegate dev-cluster up --node` is running.
image:
	python3 -m kubegate.images --load
