"""The serving tier as Services of the local stack: N gRPC inference workers and the REST gateway,
started and stopped by the same code as Kafka or MLflow (pid files, logs, port checks, log tails on
failure). ``lifecycle serve`` is built on ``start_serving`` / ``stop_serving``.

Only command lines cross into ``serving/`` (``python -m serving.worker``, uvicorn's factory path):
this layer never imports it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

from lifecycle.settings import Settings
from lifecycle.stack import manager, process
from lifecycle.stack.base import Launch, Service

Report = Callable[[str], None]
#: Seconds for a worker to load its model and the gateway to see every worker serving.
SERVING_TIMEOUT = 300.0


def gateway_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.gateway_port}"


def readiness(settings: Settings) -> dict[str, Any]:
    """The gateway's ``/readyz`` body; empty while it does not answer (or answers 503: no worker ready).
    With keys set the gateway lists its workers only to a caller with a key: the first one is sent."""
    auth = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    req = urllib.request.Request(gateway_url(settings) + "/readyz", headers=auth)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return {}


class WorkerService(Service):
    """One gRPC inference worker; it answers once it listens (the gateway waits for its model)."""

    def __init__(self, settings: Settings, index: int, env: dict[str, str], options: list[str]) -> None:
        super().__init__(settings)
        self.port = settings.worker_port + index
        self.name = f"worker-{self.port}"
        self.env, self.options = env, options

    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def launch(self) -> Launch:
        argv = [sys.executable, "-m", "serving.worker", "--port", str(self.port), "--name", self.name, *self.options]
        return Launch(argv, env=self.env)

    def probe(self) -> bool:
        with socket.create_connection((self.settings.host, self.port), timeout=1):
            return True


class GatewayService(Service):
    """The REST gateway; it answers once every worker it routes to serves a model."""

    name = "gateway"

    def __init__(self, settings: Settings, workers: list[WorkerService], env: dict[str, str]) -> None:
        super().__init__(settings)
        self.after = tuple(w.name for w in workers)
        self.env = env

    def ports(self) -> list[int]:
        return [self.settings.gateway_port]

    @property
    def address(self) -> str:
        return gateway_url(self.settings)

    def launch(self) -> Launch:
        s = self.settings
        argv = [sys.executable, "-m", "serving.gateway", "--host", s.host, "--port", str(s.gateway_port)]
        return Launch(argv, env=self.env)

    def probe(self) -> bool:
        workers = readiness(self.settings).get("workers") or []
        return bool(workers) and all(w.get("up") for w in workers)


def serving_services(
    settings: Settings, workers: int, model_path: str = "", threads: int = 0, events: bool = True
) -> list[Service]:
    """Workers first, then the gateway; torch threads split the machine's cores between the workers."""
    threads = threads or max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "LIFECYCLE_WORKERS": str(workers)}
    options = ["--threads", str(threads)]
    options += ["--model-path", model_path] if model_path else []
    options += [] if events else ["--no-events"]
    ws = [WorkerService(settings, i, env, options) for i in range(workers)]
    return [*ws, GatewayService(settings, ws, env)]


def start_serving(
    settings: Settings,
    workers: int,
    model_path: str = "",
    threads: int = 0,
    events: bool = True,
    timeout: float = SERVING_TIMEOUT,
    report: Report = print,
) -> list[str]:
    """Start what is not running; wait until every worker serves and the gateway is ready. Raises
    ``StackError`` naming the process that died or did not get ready, with its log's tail."""
    services = serving_services(settings, workers, model_path, threads, events)
    return [s.name for s in manager.start(settings, services, report, timeout)]


def stop_serving(settings: Settings, report: Report = print) -> list[str]:
    """Stop the gateway and every worker that has a pid file; returns their names."""
    stopped = []
    for pidfile in [settings.run_dir / "gateway.pid", *sorted(settings.run_dir.glob("worker-*.pid"))]:
        if process.stop(pidfile):
            stopped.append(pidfile.stem)
            report(f"{pidfile.stem}: stopped")
    return stopped
