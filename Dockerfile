# syntax=docker/dockerfile:1.7
# One image for both processes: `kubegate operator` and `kubegate dataplane`
# (see manifests/base). Stage 1 builds the kubegate wheel and wheels of every
# dependency; the final stage installs only those wheels (--no-index: no
# network, no compilers) and runs as a numeric non-root user.
# Pin the base by digest in your registry mirror for reproducible builds, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubegate" \
      org.opencontainers.image.description="Kubernetes-native API gateway: operator and data plane" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/kubegate-*.whl \
    && pip uninstall --yes pip setuptools wheel
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8443 9090
ENTRYPOINT ["kubegate"]
CMD ["--help"]
