# syntax=docker/dockerfile:1.7
# LoRA fine-tuning under torchrun on CUDA GPUs (or CPU): the image of the Airflow `kubernetes` training
# backend's pods and of the Helm chart's training Job (LIFECYCLE_TRAINER_IMAGE / trainer.image).
#   docker build -f docker/trainer.Dockerfile -t ghcr.io/llm-lifecycle/trainer:0.1.0 .
# torch's CUDA wheels carry their CUDA libraries (nvidia-* wheels), so the node only needs the driver.
# The pod runs `python -m torch.distributed.run --nproc-per-node N … -m training.finetune --config …`.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements-trainer.txt /tmp/constraints.txt
COPY pyproject.toml README.md /src/
COPY cli /src/cli
COPY lifecycle /src/lifecycle
COPY runtime /src/runtime
COPY training /src/training
COPY serving /src/serving
COPY plugins /src/plugins
# the package with its [train] extra (no Airflow), at the versions resolved together in the dev environment
RUN pip install --extra-index-url "${TORCH_INDEX}" -c /tmp/constraints.txt "/src[train]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llm-lifecycle trainer"
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid app --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    LIFECYCLE_HOME=/var/lib/llm-lifecycle
USER 10001:10001
WORKDIR /home/app
# A batch container has no endpoint; the check proves torch and the trainer import.
HEALTHCHECK --interval=60s --timeout=20s --retries=1 CMD ["python", "-c", "import torch, training.finetune"]
CMD ["python", "-m", "torch.distributed.run", "--help"]
