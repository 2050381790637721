"""MLflow tracking server and model registry: SQLite backend store, artifacts served by the server.

Clients upload artifacts through the server (``mlflow-artifacts:``), as they would against a
production server backed by an object store, so nothing depends on sharing a filesystem with it.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

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
        return Launch(argv=argv, env=env)

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
