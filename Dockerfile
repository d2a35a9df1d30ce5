# poolserve container image.
#
#   docker build -t poolserve .                                 # CPU: onnxruntime
#   docker build -t poolserve:gpu --build-arg EXTRA=gpu .       # GPU: onnxruntime-gpu (CUDA provider)
#   docker run --rm -p 50051:50051 -p 9464:9464 poolserve
#
# Two stages: `build` compiles the C kernels into a wheel (needs gcc); the runtime stage installs
# that wheel into a venv on a slim image without a compiler.  tests/test_deploy.py runs the `pip`
# and `venv` steps below, as written, outside the source tree, since CI has no Docker engine;
# hadolint lints this file in `make test`.  Keep those RUN lines plain shell.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the wheel, with libpoolkernels.so compiled in ---------------------------------------
FROM ${PYTHON_IMAGE} AS build
# gcc and libgomp for the OpenMP kernels; versions come with the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libgomp1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the package build reads, so that editing tests or docs does not invalidate this layer.
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY kernels/ kernels/
COPY server/ server/
COPY client/ client/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# `server` installs onnxruntime (CPU provider); `gpu` installs onnxruntime-gpu instead (the two
# provide the same module and must not both be installed).  The GPU image also needs the NVIDIA
# container runtime on the host (`docker run --gpus all`).
ARG EXTRA=server

# libgomp: the kernels' OpenMP runtime (the only shared library they link beyond libc and libm).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 poolserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin poolserve

# A venv keeps our dependencies apart from the image's Python.  The wheel is installed by its
# path, never by name from an index, so that no package of the same name elsewhere can stand
# in for it; its dependencies come from the package index.
COPY --from=build /wheels /wheels
RUN python -m venv /opt/poolserve \
 && /opt/poolserve/bin/python -m pip install --no-cache-dir "$(echo /wheels/poolserve-*.whl)[${EXTRA}]" \
 && rm -rf /wheels

# Every `poolserve serve` flag has a POOLSERVE_* variable (flags on the command line win).
# Listen on every interface inside the container; log JSON lines for the log collector.
ENV PATH=/opt/poolserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POOLSERVE_HOST=0.0.0.0 \
    POOLSERVE_PORT=50051 \
    POOLSERVE_METRICS_PORT=9464 \
    POOLSERVE_LOG_FORMAT=json

# A numeric user, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
# gRPC (native API, health, reflection) and the Prometheus metrics endpoint.
EXPOSE 50051 9464

# The gRPC health service, asked by our own small client (no curl, no grpc_health_probe binary):
# exit 0 only while SERVING.  It reads POOLSERVE_PORT, and POOLSERVE_HEALTH_TLS_CA (and _CERT,
# _KEY, _SERVER_NAME) for a TLS server.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["poolserve", "health", "--timeout", "3"]

# Exec form: poolserve is PID 1 and gets SIGTERM itself; it turns health NOT_SERVING, drains
# and exits 0 within POOLSERVE_DRAIN_DELAY + POOLSERVE_GRACE seconds (keep that under the
# orchestrator's stop timeout).  `docker run IMAGE health` runs another subcommand.
STOPSIGNAL SIGTERM
ENTRYPOINT ["poolserve"]
CMD ["serve"]
