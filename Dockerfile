# PolypIndex images. Two targets, one install step (the one CI runs, `make venv`):
#   cpu (default, `docker build .`): python:3.11-slim, EXTRAS=cpu,postgres — ONNX Runtime
#       + faiss-cpu + FastAPI, no torch. EXTRAS=dev gives everything (training, export,
#       tests), as in CI; needed to build models.
#   gpu (`docker build --target gpu .`): an NVIDIA CUDA 13 base, EXTRAS=gpu,tensorrt,postgres
#       — onnxruntime-gpu (TensorRT, then CUDA, then CPU) + faiss-gpu-cu12; run with a GPU
#       (`docker run --gpus all`, or compose's `gpu` profile). docs/gpu.md.
#
# Access: the command binds 0.0.0.0, so the service refuses to start until its database
# holds an API key (or POLYPINDEX_AUTH=open, only behind a proxy that authenticates).
# Create the first one with the same image and settings, e.g.
#   docker compose run --rm api polypindex keys create admin --scope admin
# (the token is printed once). docs/deploy.md.

# The project's files, copied once and shared by both targets.
FROM scratch AS source
COPY pyproject.toml Makefile README.md requirements-dev.lock requirements-tracking.txt /app/
# The package folder holds every file (the top-level model/, training/, ... are links into
# it, for browsing: docs/architecture.md#layout).
COPY polypindex /app/polypindex

# --- GPU target -------------------------------------------------------------------------
# The base brings only the CUDA 13 runtime and the container toolkit's hooks; cuDNN, cuBLAS
# and TensorRT come as wheels with the `gpu` and `tensorrt` extras (the same libraries a
# pip install outside Docker gets). Ubuntu 24.04's Python is 3.12.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS gpu

ARG EXTRAS=gpu,tensorrt,postgres
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POLYPINDEX_HOME=/data \
    PATH=/app/.venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make python3.12 python3.12-venv libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY --from=source /app /app
RUN make venv PYTHON=python3.12 EXTRAS=${EXTRAS}

# TensorRT engines are built on first use and cached on the volume (minutes once, then
# seconds); see docs/gpu.md.
RUN useradd --create-home --uid 1001 polyp && mkdir -p /data && chown polyp /data
USER 1001
VOLUME ["/data"]
EXPOSE 8000
# /readyz: 503 until the model, the store and the index are ready (docs/deploy.md#probes-for-orchestrators)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["polypindex", "serve", "--host", "0.0.0.0", "--port", "8000"]

# --- CPU target (the default: the last stage) ---------------------------------------------
FROM python:3.11-slim AS cpu

ARG EXTRAS=cpu,postgres
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    POLYPINDEX_HOME=/data \
    PATH=/app/.venv/bin:$PATH

# Debian's point releases move; the base image tag pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY --from=source /app /app
RUN make venv PYTHON=python3.11 EXTRAS=${EXTRAS}

RUN useradd --create-home --uid 1000 polyp && mkdir -p /data && chown polyp /data
USER 1000
VOLUME ["/data"]
EXPOSE 8000
# /readyz: 503 until the model, the store and the index are ready (docs/deploy.md#probes-for-orchestrators)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["polypindex", "serve", "--host", "0.0.0.0", "--port", "8000"]
