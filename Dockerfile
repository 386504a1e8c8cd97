# PolypIndex image. The install step is the one CI runs (`make venv`), with the
# extras chosen by a build argument:
#   EXTRAS=cpu,postgres (default): the serving image — ONNX Runtime + FAISS + FastAPI, no torch.
#   EXTRAS=gpu,postgres: the same with faiss-gpu (CUDA 12; run with a GPU, e.g. --gpus all).
#   EXTRAS=dev: everything (training, export, tests), as in CI; needed to build models.
FROM python:3.11-slim

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
COPY pyproject.toml Makefile README.md requirements-dev.lock ./
COPY model ./model
COPY training ./training
COPY indexer ./indexer
COPY service ./service
COPY benchmarks ./benchmarks
COPY polypindex ./polypindex
RUN make venv PYTHON=python3.11 EXTRAS=${EXTRAS}

RUN useradd --create-home --uid 1000 polyp && mkdir -p /data && chown polyp /data
USER 1000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["polypindex", "serve", "--host", "0.0.0.0", "--port", "8000"]
