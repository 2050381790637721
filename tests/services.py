"""Kill a service of the test stack the hard way and start it again with the project's own `up`."""

from __future__ import annotations

import os
import signal

from lifecycle.settings import Settings
from lifecycle.stack import manager, process


def kill(stack: Settings, name: str) -> None:
    """SIGKILL the service's process group (MLflow's uvicorn workers answer otherwise) and wait until
    its pid file says it is gone."""
    svc = manager.select(stack, [name])[0]
    pid = process.read_pid(svc.pidfile)
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    assert process.wait_for(lambda: process.read_pid(svc.pidfile) is None, timeout=30) == "ok"


def restart(stack: Settings, name: str) -> None:
    assert manager.up(stack, [name], report=lambda m: None) == [name]
    assert {s.name: s.state for s in manager.status(stack)}[name] == "up"
