"""Airflow 3 for the local stack: api-server (UI + REST), scheduler, dag-processor, triggerer.

All four share one environment built from the settings: ``AIRFLOW_HOME`` under the state dir, this
repo's ``dags/`` and ``plugins/``, the metadata DB (SQLite unless ``LIFECYCLE_AIRFLOW_DB_URL``), the
secrets every component must agree on (JWT, Fernet, session key; generated once and kept in the
state dir), the admin user of the simple auth manager, and the Airflow connections
``lifecycle_kafka``, ``lifecycle_mongo`` and ``lifecycle_mlflow`` (as ``AIRFLOW_CONN_*`` variables,
so they always follow the settings and never live in a DAG).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from datetime import datetime
from functools import cached_property
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lifecycle import topics
from lifecycle.settings import Settings
from lifecycle.stack.base import Launch, Service, StackError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONN_KAFKA = "lifecycle_kafka"
CONN_MONGO = "lifecycle_mongo"
CONN_MLFLOW = "lifecycle_mlflow"


def airflow_home(settings: Settings) -> Path:
    return settings.service_data_dir("airflow")


def _load_secrets(settings: Settings) -> dict[str, str]:
    """JWT/Fernet/session secrets and the admin password: made once, then read back."""
    path = airflow_home(settings) / "lifecycle-secrets.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {
        "jwt_secret": secrets.token_urlsafe(32),
        "secret_key": secrets.token_urlsafe(32),
        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "admin_password": secrets.token_urlsafe(12),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    return values


def admin_credentials(settings: Settings) -> tuple[str, str] | None:
    path = airflow_home(settings) / "lifecycle-secrets.json"
    if not path.exists():
        return None
    return settings.airflow_admin_user, json.loads(path.read_text())["admin_password"]


def connections(settings: Settings) -> dict[str, dict[str, Any]]:
    """Airflow connections derived from the settings (JSON form of ``AIRFLOW_CONN_*``)."""
    mongo = urlsplit(settings.mongo_uri)
    mlflow = urlsplit(settings.mlflow_tracking_uri)
    return {
        CONN_KAFKA: {
            "conn_type": "kafka",
            "description": "Kafka of llm-lifecycle (from LIFECYCLE_KAFKA_BOOTSTRAP)",
            "extra": {
                **topics.client_config(settings),
                "group.id": "lifecycle-airflow",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # a killed triggerer's partitions go to its successor in 10 s, not Kafka's default 45 s
                "session.timeout.ms": topics.SESSION_TIMEOUT_MS,
            },
        },
        CONN_MONGO: {
            "conn_type": "mongo",
            "description": "MongoDB of llm-lifecycle (from LIFECYCLE_MONGO_URI)",
            "host": mongo.hostname or settings.host,
            "port": mongo.port or 27017,
            "schema": settings.mongo_db,
            "login": mongo.username,
            "password": mongo.password,
            "extra": {"srv": mongo.scheme == "mongodb+srv"},
        },
        CONN_MLFLOW: {
            "conn_type": "http",
            "description": "MLflow tracking server (from MLFLOW_TRACKING_URI)",
            "host": f"{mlflow.scheme}://{mlflow.hostname}",
            "port": mlflow.port,
            "extra": {"tracking_uri": settings.mlflow_tracking_uri},
        },
    }


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment every Airflow component of the local stack runs with."""
    home = airflow_home(settings)
    sec = _load_secrets(settings)
    base_url = f"http://{settings.host}:{settings.airflow_port}"
    db_url = settings.airflow_db_url or f"sqlite:///{home / 'airflow.db'}"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(settings.dags_paused),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": sec["secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.logs_dir / "airflow"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.airflow_port + 2),
        # A new or edited DAG file shows up within seconds on a laptop, not minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "LIFECYCLE_HOME": str(settings.home),
        "NO_PROXY": "*",
    }
    for conn_id, conn in connections(settings).items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


class _AirflowComponent(Service):
    """One Airflow process; the api-server prepares the shared home and database."""

    command: str = ""
    #: Its port is ``airflow_port`` plus this (the log servers of the scheduler and triggerer), if any.
    port_offset: int | None = None

    def ports(self) -> list[int]:
        return [] if self.port_offset is None else [self.settings.airflow_port + self.port_offset]

    @cached_property
    def env(self) -> dict[str, str]:
        return {**os.environ, **airflow_env(self.settings)}

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.airflow_port}"

    def launch(self) -> Launch:
        return Launch(argv=[sys.executable, "-m", "airflow", self.command], env=self.env)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=3) as resp:
            return dict(json.loads(resp.read()))

    def probe(self) -> bool:
        component = self.command.replace("-", "_")
        info = self.health().get(component, {})
        if info.get("status") != "healthy":
            return False
        # Healthy means some such job beat within 30 s: a killed predecessor's last beat counts for that
        # long, so this process answers only once a beat is at least as new as its pid file.
        beat = info.get(f"latest_{component}_heartbeat")
        try:
            started = self.pidfile.stat().st_mtime
        except OSError:
            return False
        return bool(beat) and datetime.fromisoformat(str(beat)).timestamp() >= started - 1.0

    def version(self) -> str:
        return dist_version("apache-airflow")


class AirflowApiServer(_AirflowComponent):
    name = "airflow-api-server"
    command = "api-server"
    port_offset = 0

    @property
    def address(self) -> str:
        return self.api_url

    def prepare(self) -> None:
        home = airflow_home(self.settings)
        home.mkdir(parents=True, exist_ok=True)
        sec = _load_secrets(self.settings)
        # The simple auth manager reads (or would generate) passwords here; we fix ours.
        pw_file = home / "passwords.json"
        pw_file.write_text(json.dumps({self.settings.airflow_admin_user: sec["admin_password"]}))
        pw_file.chmod(0o600)
        self._migrate(home)

    def _migrate(self, home: Path) -> None:
        """`airflow db migrate`, skipped when this DB was already migrated by this Airflow version."""
        env = self.env
        marker = home / "migrated"
        stamp = f"{dist_version('apache-airflow')} {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']}"
        if marker.exists() and marker.read_text() == stamp:
            return
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise StackError(f"airflow: `airflow db migrate` failed:\n{(done.stdout + done.stderr)[-3000:]}")
        marker.write_text(stamp)

    def probe(self) -> bool:
        return self.health().get("metadatabase", {}).get("status") == "healthy"


class AirflowScheduler(_AirflowComponent):
    name = "airflow-scheduler"
    command = "scheduler"
    after = ("airflow-api-server",)
    port_offset = 1  # task-log server ([logging] worker_log_server_port)


class AirflowDagProcessor(_AirflowComponent):
    name = "airflow-dag-processor"
    command = "dag-processor"
    after = ("airflow-api-server",)


class AirflowTriggerer(_AirflowComponent):
    name = "airflow-triggerer"
    command = "triggerer"
    after = ("airflow-api-server",)
    port_offset = 2  # trigger-log server ([logging] trigger_log_server_port)
