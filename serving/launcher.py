"""Start and stop the serving tier as background processes: N gRPC workers and the gateway, with pid
files and logs under the state dir like the local stack. ``lifecycle serve`` is built on it."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

from lifecycle.settings import Settings
from lifecycle.stack import process

Report = Callable[[str], None]


def _names(settings: Settings, workers: int) -> list[tuple[str, int]]:
    return [(f"worker-{settings.worker_port + i}", settings.worker_port + i) for i in range(workers)]


def gateway_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.gateway_port}"


def ready(settings: Settings) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(gateway_url(settings) + "/readyz", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except Exception:  # noqa: BLE001 - not answering (yet), or 503 while no worker is ready
        return {}


def start(
    settings: Settings,
    workers: int,
    model_path: str = "",
    threads: int = 0,
    events: bool = True,
    timeout: float = 300.0,
    report: Report = print,
) -> list[str]:
    """Start what is not running; wait until every worker serves and the gateway is ready."""
    run, logs = settings.run_dir, settings.logs_dir
    started = []
    threads = threads or max(1, (os.cpu_count() or 2) // workers)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "LIFECYCLE_WORKERS": str(workers)}
    for name, port in _names(settings, workers):
        pidfile = run / f"{name}.pid"
        if process.read_pid(pidfile) is not None:
            continue
        process.kill_leftovers(pidfile)
        argv = [sys.executable, "-m", "serving.worker", "--port", str(port), "--name", name, "--threads", str(threads)]
        if model_path:
            argv += ["--model-path", model_path]
        if not events:
            argv.append("--no-events")
        process.spawn(argv, pidfile=pidfile, logfile=logs / f"{name}.log", env=env)
        started.append(name)
        report(f"{name}: started on {settings.host}:{port} (log {logs / f'{name}.log'})")
    gw_pid = run / "gateway.pid"
    if process.read_pid(gw_pid) is None:
        process.kill_leftovers(gw_pid)
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serving.gateway.app:app_from_env",
            "--host",
            settings.host,
            "--port",
            str(settings.gateway_port),
            "--log-level",
            "warning",
        ]
        process.spawn(argv, pidfile=gw_pid, logfile=logs / "gateway.log", env=env)
        started.append("gateway")
        report(f"gateway: started on {gateway_url(settings)}")
    pids = [run / f"{n}.pid" for n, _ in _names(settings, workers)] + [gw_pid]

    def all_up() -> bool:
        r = ready(settings)
        ws: list[dict[str, Any]] = r.get("workers") or []
        return bool(ws) and all(w.get("up") for w in ws)

    alive = lambda: all(process.read_pid(p) is not None for p in pids)  # noqa: E731
    outcome = process.wait_for(all_up, timeout=timeout, alive=alive, interval=0.5)
    if outcome != "ok":
        dead = [p.stem for p in pids if process.read_pid(p) is None]
        raise RuntimeError(
            f"serving did not get ready ({outcome}); "
            + (f"exited: {', '.join(dead)} (see {logs})" if dead else f"no model served yet? see {logs}")
        )
    return started


def stop(settings: Settings, report: Report = print) -> list[str]:
    stopped = []
    for pidfile in [*sorted(settings.run_dir.glob("worker-*.pid")), settings.run_dir / "gateway.pid"]:
        if process.stop(pidfile):
            stopped.append(pidfile.stem)
            report(f"{pidfile.stem}: stopped")
    return stopped
