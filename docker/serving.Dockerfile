# syntax=docker/dockerfile:1.7
# Gateway and gRPC inference worker (one image, two commands):
#   docker build -f docker/serving.Dockerfile -t llm-lifecycle/serving:0.1.0 .
#   gateway: python -m serving.gateway --host 0.0.0.0 --port 8000
#   worker:  python -m serving.worker --port 50051 (LIFECYCLE_HOST=0.0.0.0)
# TORCH_INDEX selects CPU wheels (default) or a CUDA build for GPU workers.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements-serving.txt /tmp/constraints.txt
COPY pyproject.toml README.md /src/
COPY cli /src/cli
COPY lifecycle /src/lifecycle
COPY runtime /src/runtime
COPY serving /src/serving
COPY training /src/training
COPY plugins /src/plugins
# the package with its [serve] extra (no Airflow), at the versions resolved together in the dev environment
RUN pip install --extra-index-url "${TORCH_INDEX}" -c /tmp/constraints.txt "/src[serve]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/llm-lifecycle/llm-lifecycle" \
      org.opencontainers.image.title="llm-lifecycle serving"
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
# a C compiler: an int8 worker compiles its quantisation loops for the CPU it runs on (cached, see
# serving/worker/kernels.py); without one it uses torch's ops, ~15 ms slower a decode step of 32 rows
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    LIFECYCLE_HOME=/var/lib/llm-lifecycle \
    LIFECYCLE_CACHE_DIR=/var/lib/llm-lifecycle/cache \
    SERVING_ROLE=gateway
RUN mkdir -p /var/lib/llm-lifecycle && chown app:app /var/lib/llm-lifecycle
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/opt/healthcheck.py"]
CMD ["python", "-m", "serving.gateway", "--host", "0.0.0.0", "--port", "8000"]
