# syntax=docker/dockerfile:1.7
# The MLflow tracking server and model registry with PostgreSQL support and the basic-auth app's Flask-WTF
# (the official image lacks both). Artifacts are served by the server itself (--serve-artifacts) from a volume.
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.17.2

FROM ${MLFLOW_IMAGE}
RUN pip install --no-cache-dir "psycopg2-binary==2.9.10" "Flask-WTF==1.3.0" \
 && groupadd --gid 10001 mlflow && useradd --uid 10001 --gid mlflow --no-create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /var/lib/mlflow && chown mlflow:mlflow /var/lib/mlflow
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=3)"]
CMD ["mlflow", "server", "--host=0.0.0.0", "--port=5000"]
