"""MLflow tracking server and model registry: SQLite backend store, artifacts served by the server.

Clients upload artifacts through the server (``mlflow-artifacts:``), as they would against a
production server backed by an object store, so nothing depends on sharing a filesystem with it.
With ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` set, the server runs MLflow's
basic-auth app (users in ``auth.db`` next to the backend store) with that user as its admin: every
request but ``/health`` then needs the credentials, which MLflow's clients send from the same variables.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.request
from pathlib import Path

from lifecycle.stack.base import Launch, Service


class MlflowService(Service):
    name = "mlflow"

    def ports(self) -> list[int]:
        return [self.settings.mlflow_port]

    @property
    def address(self) -> str:
        return f"http://{self.settings.host}:{self.settings.mlflow_port}"

    def prepare(self) -> None:
        (self.data_dir / "artifacts").mkdir(parents=True, exist_ok=True)

    def launch(self) -> Launch:
        s = self.settings
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--host", s.host, "--port", str(s.mlflow_port),
            "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination", str(self.data_dir / "artifacts"),
            "--serve-artifacts",
            # One worker is plenty for a laptop; each costs ~250 MB.
            "--workers", "1",
            "--allowed-hosts", f"{s.host},{s.host}:{s.mlflow_port},localhost,localhost:{s.mlflow_port}",
        ]  # fmt: skip
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # The job runner (GenAI judges/optimisers, 7 huey processes, ~1.7 GB) is unused here.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        if s.mlflow_tracking_username:
            argv += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self._auth_config())
            # read once, when the user store is empty; the password never goes into a file
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = s.mlflow_tracking_password
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", self._secret_key())  # the CSRF key of its forms
        return Launch(argv=argv, env=env)

    def _secret_key(self) -> str:
        path = self.data_dir / "flask-secret-key"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text()

    def _auth_config(self) -> Path:
        """MLflow's basic-auth configuration: nobody but the admin (this user) may read or write."""
        path = self.data_dir / "auth.ini"
        path.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{self.data_dir / 'auth.db'}\n"
            f"admin_username = {self.settings.mlflow_tracking_username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n"
        )
        return path

    def probe(self) -> bool:
        with urllib.request.urlopen(f"{self.address}/health", timeout=2) as resp:
            return resp.status == 200

    def version(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.address}/version", timeout=2) as resp:
                body = resp.read().decode().strip()
        except OSError:
            return ""
        try:
            return str(json.loads(body))
        except ValueError:
            return body
