# syntax=docker/dockerfile:1
#
# NaCS images, one Dockerfile, two targets:
#   api     the HTTP API (FastAPI served by uvicorn). No torch, no engine.
#   worker  the RQ worker that runs selections. CPU torch by default.
#
#   docker build --target api    -t nacs-api:local .
#   docker build --target worker -t nacs-worker:local .
#
# A CUDA worker takes torch from a CUDA wheel index instead; the wheels carry
# their own CUDA runtime, so the slim base still works (the host needs the
# NVIDIA driver and container toolkit):
#   docker build --target worker -t nacs-worker:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# Nothing secret is baked in: keys, passwords and storage credentials come from
# the environment at run time (see .env.example and docs/DEPLOY.md).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 nacs \
 && useradd --system --uid 10001 --gid nacs --create-home --home-dir /home/nacs nacs \
 && mkdir -p /var/lib/nacs \
 && chown nacs:nacs /var/lib/nacs
WORKDIR /var/lib/nacs

# Builds the project's wheel once; the runtime targets install it, so neither
# carries the source tree or build leftovers.
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nacs_engine/ nacs_engine/
COPY nacs_client/ nacs_client/
COPY worker/ worker/
COPY service/ service/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS api
COPY --from=wheel /wheels/ /wheels/
# The last command fails the build if anything pulled torch into this image.
RUN pip install "$(ls /wheels/nacs-*.whl)[server,gcs]" \
 && rm -rf /wheels \
 && python -c "import importlib.util, sys; sys.exit('torch found in the api image' if importlib.util.find_spec('torch') else 0)"
USER nacs
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["nacs", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# torch first, in its own layer: it is by far the largest download and changes
# far less often than the project.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
COPY --from=wheel /wheels/ /wheels/
RUN pip install "$(ls /wheels/nacs-*.whl)[server,engine,gcs]" \
 && rm -rf /wheels \
 && python -c "import torch, nacs_engine, worker; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
USER nacs
# Healthy while the Redis that feeds this worker answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import redis; from worker.settings import SharedSettings; redis.Redis.from_url(SharedSettings().redis_url, socket_timeout=4).ping()"]
CMD ["nacs", "worker"]
