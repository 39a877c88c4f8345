# The layerloop image: the worker that runs the deployments (and the one-shot `deploy` service).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    LAYERLOOP_HOME=/app

# CPU torch first, from PyTorch's CPU index: the plain `torch` requirement would pull a multi-GB
# CUDA build (same reason as the Makefile's pin). For a GPU image pass TORCH_INDEX=https://download.pytorch.org/whl/cu128.
ARG TORCH_CPU_PIN=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_CPU_PIN"

WORKDIR /app
COPY pyproject.toml README.md prefect.yaml ./
COPY layerloop ./layerloop
COPY flows ./flows
COPY tasks ./tasks
COPY models ./models
COPY storage ./storage
COPY scripts ./scripts
# editable: the deployments' pull step runs flows from /app, so the installed code is that code; the
# ray extra makes the same image a Ray head or node (docker-compose.yml, profile ray)
RUN pip install -e ".[s3,ray]"

RUN useradd --create-home --uid 1000 layerloop \
    && mkdir -p /app/layerloop-store /var/lib/prefect \
    && chown -R layerloop:layerloop /app/layerloop-store /var/lib/prefect
USER layerloop

CMD ["prefect", "worker", "start", "--pool", "layerloop", "--type", "process"]
