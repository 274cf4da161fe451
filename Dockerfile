# syntax=docker/dockerfile:1
# switchboard in two stages: `build` compiles the llama-server payloads from the pinned
# llama-cpp-python sdist and packs them into a wheel; `runtime` installs only that wheel (no
# compiler, no build tools), runs as an unprivileged user and keeps models and backends in the
# /data volume.
#
#   docker build -t switchboard .
#   docker run -p 127.0.0.1:8080:8080 -v switchboard:/data switchboard
#
# A CUDA build swaps both bases for NVIDIA's images and adds the cuda variant (compose.yaml's
# nvidia profile passes exactly these):
#   docker build -t switchboard:cuda \
#     --build-arg BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg VARIANTS="cpu cpu_avx2 cuda" .

ARG BUILD_BASE=python:3.11-slim-bookworm
ARG RUNTIME_BASE=python:3.11-slim-bookworm

FROM ${BUILD_BASE} AS build
ARG VARIANTS="cpu cpu_avx2"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
# NVIDIA's images have no Python; Python's have no compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make ca-certificates \
      $(python3 -m venv --help >/dev/null 2>&1 || echo python3 python3-venv) \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir "setuptools>=77" "build>=1.2,<2" \
      "cmake>=3.28,<4" "ninja>=1.11,<2"
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY runner ./runner
COPY gateway ./gateway
COPY configs ./configs
# The compile (about 6 minutes on 2 cores) is cached across builds by source digest.
RUN --mount=type=cache,target=/root/.cache/switchboard \
    PATH=/opt/build/bin:$PATH python -m runner.build ${VARIANTS} \
 && PATH=/opt/build/bin:$PATH python -m build --wheel --no-isolation --outdir /dist

FROM ${RUNTIME_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin \
      switchboard \
 && mkdir -p /data /app \
 && chown switchboard:switchboard /data
COPY --from=build /dist/ /tmp/dist/
RUN python3 -m venv /opt/switchboard \
 && /opt/switchboard/bin/pip install --no-cache-dir /tmp/dist/*.whl \
 && rm -rf /tmp/dist
COPY configs /app/configs
WORKDIR /app
# Listening on every interface is what a container needs; serve refuses that without API keys
# unless told --insecure, which CMD says: publish the port to the host's loopback only (as
# compose.yaml does), or set SWITCHBOARD_API_KEYS.
ENV PATH=/opt/switchboard/bin:$PATH \
    SWITCHBOARD_HOME=/data \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_PORT=8080
USER switchboard
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
CMD ["switchboard", "serve", "--insecure"]
