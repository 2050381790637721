"""Faults of the local stack: a dead service, a taken port, a missing tool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle.settings import Settings, load_settings
from lifecycle.stack import manager, process
from lifecycle.stack.base import MissingToolError, StackError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scratch(tmp_path: Path, stack_env: dict[str, str]) -> Callable[..., Settings]:
    """Settings for a second, empty stack in a temporary home on free ports (nothing started)."""

    def make(**overrides: object) -> Settings:
        ports = {f"{n}_port": _free_port() for n in ("kafka", "mongo", "mlflow", "airflow")}
        return load_settings(**{"home": tmp_path / "home", **ports, **overrides})

    return make


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.stack
def test_dead_service_shows_down_and_up_restarts_it_with_its_data(stack: Settings) -> None:
    from pymongo import MongoClient

    marker = uuid.uuid4().hex
    with MongoClient(stack.mongo_uri) as client:
        client[stack.mongo_db].survivors.insert_one({"marker": marker})

    mongo = manager.select(stack, ["mongo"])[0]
    pid = process.read_pid(mongo.pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert process.wait_for(lambda: process.read_pid(mongo.pidfile) is None, timeout=10) == "ok"
    states = {s.name: s.state for s in manager.status(stack)}
    assert states["mongo"] == "down"
    assert states["kafka"] == "up"

    cli = subprocess.run([sys.executable, "-m", "cli.main", "status"], capture_output=True, text=True)
    assert cli.returncode == 3  # degraded stack
    assert "down" in cli.stdout

    assert manager.up(stack, report=lambda m: None) == ["mongo"]  # only the dead one is started
    with MongoClient(stack.mongo_uri) as client:
        assert client[stack.mongo_db].survivors.find_one({"marker": marker}) is not None


def test_taken_port_names_port_and_service_and_starts_nothing(
    scratch: Callable[..., Settings], taken_port: int
) -> None:
    s = scratch(mlflow_port=taken_port)
    with pytest.raises(StackError) as err:
        manager.up(s, ["mlflow"], report=lambda m: None)
    assert f"mlflow: port 127.0.0.1:{taken_port} is already in use" in str(err.value)
    assert f"LISTEN pid {os.getpid()}" in str(err.value)  # who holds it
    # The whole stack is refused before anything starts. (Which port is named may vary: the other
    # scratch ports are random and a client's ephemeral port can take one of them meanwhile.)
    with pytest.raises(StackError, match="is already in use by another program"):
        manager.up(s, report=lambda m: None)
    assert not any(s.run_dir.glob("*.pid")), "nothing may be left half-started"


def test_missing_java_says_what_to_install(scratch: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    scratch_settings = scratch()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    with pytest.raises(MissingToolError, match=r"kafka: `java` is not installed .*install a Java 17\+ runtime"):
        manager.up(scratch_settings, ["kafka"], report=lambda m: None)
    assert not any(scratch_settings.run_dir.glob("*.pid"))


def test_missing_go_for_ferretdb_says_what_to_install(
    scratch: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scratch(cache_dir=tmp_path / "empty-cache", mongo_backend="ferretdb")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingToolError, match=r"mongo: `go` is not installed .*install Go"):
        manager.up(s, ["mongo"], report=lambda m: None)


def test_unknown_service_is_named(scratch: Callable[..., Settings]) -> None:
    with pytest.raises(StackError, match="unknown service 'kafak'; known: airflow-api-server"):
        manager.up(scratch(), ["kafak"], report=lambda m: None)


def test_leftover_children_of_a_dead_service_are_stopped(tmp_path: Path) -> None:
    # A parent that starts two children, one in its group and one in a session of its own, then
    # dies: both are left over, and both are found (by group, by the service mark in the environment).
    pidfile = tmp_path / "svc.pid"
    code = (
        "import subprocess, sys; subprocess.Popen(['sleep', '300']);"
        " subprocess.Popen(['sleep', '301'], start_new_session=True); sys.exit(0)"
    )
    process.spawn([sys.executable, "-c", code], pidfile=pidfile, logfile=tmp_path / "svc.log")
    leader = int(pidfile.read_text().split()[0])
    assert process.wait_for(lambda: process.read_pid(pidfile) is None, timeout=30) == "ok"
    left = process.kill_leftovers(pidfile)
    assert len(left) == 2 and leader not in left
    for pid in left:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
