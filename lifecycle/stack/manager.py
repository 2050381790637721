"""``lifecycle up | down | status``: start, stop and describe the local stack.

``up`` is idempotent: a service that answers is left alone, one that died is restarted on its data.
Before anything starts it checks tools and ports for every service it will start, so a missing
program or a taken port fails with nothing half-started; when a service then does not answer in
time, the services this call started are stopped again and the error names the service, its
address and its log file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lifecycle.settings import Settings
from lifecycle.stack import process
from lifecycle.stack.airflow import (
    AirflowApiServer,
    AirflowDagProcessor,
    AirflowScheduler,
    AirflowTriggerer,
)
from lifecycle.stack.base import Service, StackError
from lifecycle.stack.kafka import KafkaService
from lifecycle.stack.mlflow_server import MlflowService
from lifecycle.stack.mongo import MongoService

Report = Callable[[str], None]


def services(settings: Settings) -> list[Service]:
    """The local stack in start order."""
    return [
        KafkaService(settings),
        MongoService(settings),
        MlflowService(settings),
        AirflowApiServer(settings),
        AirflowScheduler(settings),
        AirflowDagProcessor(settings),
        AirflowTriggerer(settings),
    ]


def select(settings: Settings, names: list[str] | None) -> list[Service]:
    every = services(settings)
    if not names:
        return every
    known = {s.name for s in every}
    wanted = set()
    for name in names:
        matches = {k for k in known if k == name or k.startswith(name + "-")}
        if not matches:
            raise StackError(f"unknown service {name!r}; known: {', '.join(sorted(known))}")
        wanted |= matches
    return [s for s in every if s.name in wanted]


@dataclass
class ServiceStatus:
    name: str
    state: str  # "up", "unhealthy" (running, not answering), "down"
    address: str
    version: str
    rss: int
    pid: int | None
    log: str


def _describe(svc: Service) -> ServiceStatus:
    pid = process.read_pid(svc.pidfile)
    answering = False
    if pid is not None:
        try:
            answering = svc.probe()
        except Exception:  # noqa: BLE001 - not answering is a state, not an error
            answering = False
    state = "up" if pid and answering else ("unhealthy" if pid else "down")
    return ServiceStatus(
        name=svc.name,
        state=state,
        address=svc.address,
        version=svc.version() if state == "up" else "",
        rss=process.rss_bytes(pid) if pid else 0,
        pid=pid,
        log=str(svc.logfile),
    )


def status(settings: Settings) -> list[ServiceStatus]:
    return [_describe(s) for s in services(settings)]


def _prepare_env(settings: Settings) -> None:
    for path in (settings.home, settings.logs_dir, settings.run_dir, settings.cache_dir):
        path.mkdir(parents=True, exist_ok=True)


def up(settings: Settings, names: list[str] | None = None, report: Report = print) -> list[str]:
    """Start what is not running; returns the names started. Raises ``StackError``."""
    return [s.name for s in start(settings, select(settings, names), report)]


def start(
    settings: Settings, wanted: list[Service], report: Report = print, timeout: float | None = None
) -> list[Service]:
    """Start those of ``wanted`` that are not running and wait until all of them answer; returns the
    services started. Tools and ports are checked before anything starts; when one does not answer,
    the ones this call started are stopped again. Raises ``StackError``."""
    _prepare_env(settings)
    timeout = timeout or settings.startup_timeout
    todo = []
    just_died = set()
    for svc in wanted:
        if process.read_pid(svc.pidfile) is not None:
            report(f"{svc.name}: already running")
            continue
        if leftovers := process.kill_leftovers(svc.pidfile):
            report(f"{svc.name}: was dead; stopped {len(leftovers)} leftover process(es) of it")
            just_died.add(svc.name)
        todo.append(svc)
    for svc in todo:
        svc.check_tools()
    _check_ports(settings, todo, just_died)
    if todo:  # downloads, builds and migrations of different services overlap
        report("preparing: " + ", ".join(s.name for s in todo))
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            list(pool.map(lambda s: s.prepare(), todo))
    started: list[Service] = []
    try:
        _start_in_waves(todo, started, timeout, report)
        for svc in wanted:
            if svc not in todo:  # already running: it must answer too
                _await(svc, timeout)
            svc.after_start()  # idempotent (topics, …)
    except BaseException:
        for svc in reversed(started):
            process.stop(svc.pidfile)
        raise
    return started


def _check_ports(settings: Settings, todo: list[Service], just_died: set[str]) -> None:
    for svc in todo:
        # A service that just died may hold its ports a moment longer, and a killed process's listening
        # socket can outlive it while the kernel tears the process down (seen under load in CI).
        grace = 30.0 if svc.name in just_died else 15.0
        for port in svc.ports():
            if not process.wait_port_free(settings.host, port, grace):
                holders = "; ".join(process.port_holders(port)) or "unknown"
                raise StackError(
                    f"{svc.name}: port {settings.host}:{port} is already in use by another program "
                    f"(held by: {holders}); stop it or choose another port "
                    f"(see `lifecycle status` and the README settings)"
                )


def _start_in_waves(todo: list[Service], started: list[Service], timeout: float, report: Report) -> None:
    """Start services whose dependencies answer, all of a wave at once, then wait for the wave."""
    pending = list(todo)
    while pending:
        waiting_on = {s.name for s in pending}
        wave = [s for s in pending if not waiting_on.intersection(s.after)]
        for svc in wave:
            launch = svc.launch()
            process.spawn(launch.argv, pidfile=svc.pidfile, logfile=svc.logfile, env=launch.env or None, cwd=launch.cwd)
            started.append(svc)
            report(f"{svc.name}: started, waiting until it answers at {svc.address or 'its health check'}")
        with ThreadPoolExecutor(max_workers=len(wave)) as pool:
            list(pool.map(lambda s: _await(s, timeout), wave))
        pending = [s for s in pending if s not in wave]


def _await(svc: Service, timeout: float) -> None:
    t0 = time.monotonic()
    outcome = process.wait_for(svc.probe, timeout=timeout, alive=lambda: process.read_pid(svc.pidfile) is not None)
    if outcome == "ok":
        return
    where = f" at {svc.address}" if svc.address else ""
    why = "exited" if outcome == "died" else f"did not answer within {time.monotonic() - t0:.0f}s"
    tail = process.log_tail(svc.logfile)
    raise StackError(f"{svc.name}{where} {why}; log: {svc.logfile}\n{tail}")


def down(settings: Settings, names: list[str] | None = None, report: Report = print) -> list[str]:
    """Stop services (reverse start order); their data stays. Returns the names stopped."""
    stopped = []
    for svc in reversed(select(settings, names)):
        if process.stop(svc.pidfile):
            report(f"{svc.name}: stopped")
            stopped.append(svc.name)
    return stopped
