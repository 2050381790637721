"""Addresses of what the platform makes, in the UIs people open: an MLflow run or model version, an
Airflow DAG run. One place, so the CLI, the DAG tasks' extra links and the Airflow page agree."""

from __future__ import annotations

from urllib.parse import quote

from lifecycle.settings import Settings


def mlflow_base(settings: Settings) -> str:
    """The MLflow UI: the tracking server's own address (it serves the UI)."""
    return settings.mlflow_tracking_uri.rstrip("/")


def mlflow_run(settings: Settings, run_id: str, experiment_id: str | None = None) -> str:
    """The run's page; without its experiment, MLflow's direct route (it redirects to the run)."""
    if experiment_id is None:
        return f"{mlflow_base(settings)}/#/runs/{run_id}"
    return f"{mlflow_base(settings)}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_version(settings: Settings, name: str, version: int | str) -> str:
    return f"{mlflow_base(settings)}/#/models/{quote(name, safe='')}/versions/{version}"


def airflow_base(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.airflow_port}"


def airflow_run(settings: Settings, dag_id: str, run_id: str) -> str:
    return f"{airflow_base(settings)}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
