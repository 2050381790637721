"""Background processes of the local stack: spawn with a pid file, find alive, stop, measure.

A pid file holds ``PID START_TICKS`` so a recycled pid is never mistaken for our process. Every
process runs in its own session, so stopping it stops its children (JVM threads, uvicorn workers,
Airflow task processes) too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
#: Environment variable every spawned process (and whatever it forks or execs with its environment)
#: carries: the pid file of its service. Finds children that left the service's process group.
MARK = "LLM_LIFECYCLE_SERVICE"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) comes after the ")" that closes the command name.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[19])


def read_pid(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` if that very process is still alive, else None."""
    try:
        pid_s, ticks_s = pidfile.read_text().split()
        pid, ticks = int(pid_s), int(ticks_s)
    except (OSError, ValueError):
        return None
    return pid if _start_ticks(pid) == ticks else None


def spawn(
    argv: Sequence[str],
    *,
    pidfile: Path,
    logfile: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached in its own session, output appended to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**(dict(env) if env is not None else os.environ), MARK: str(pidfile)},
            cwd=cwd,
            start_new_session=True,
        )
    ticks = _start_ticks(proc.pid)
    pidfile.write_text(f"{proc.pid} {ticks}\n")
    return proc.pid


def _alive(pid: int) -> bool:
    return _start_ticks(pid) is not None


def stop(pidfile: Path, timeout: float = 20.0) -> bool:
    """SIGTERM the process group recorded in ``pidfile``, SIGKILL after ``timeout``. True if it ran."""
    pid = read_pid(pidfile)
    pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    pids = [pid, *descendants(pid)]
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    if any(_alive(p) for p in pids):
        _signal_group(pid, signal.SIGKILL)
        for p in pids:  # children that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    _reap(pid)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _pgrp(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[2])


def kill_leftovers(pidfile: Path, timeout: float = 30.0) -> list[int]:
    """SIGKILL what is left of a dead service (children outliving their parent would keep its ports)
    and wait until it is gone. Members are found by process group and by the service mark in their
    environment, so a child that moved to its own group is found too. Returns the pids killed."""
    try:
        leader = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    if read_pid(pidfile) is not None:
        return []  # the service itself is alive: nothing is left over
    mark = f"{MARK}={pidfile}".encode()
    members = [pid for pid in _live_pids() if _pgrp(pid) == leader or mark in _environ(pid)]
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in members):
        time.sleep(0.05)
    return members


def _live_pids() -> list[int]:
    me = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and _alive(int(e))]


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts or holds ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def port_sockets(port: int) -> list[tuple[str, int | None, str]]:
    """Sockets on local TCP ``port``: (state, owning pid or None, its command line)."""
    sockets: list[tuple[str, str]] = []  # (state, inode)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                sockets.append((_TCP_STATES.get(f[3], f[3]), f[9]))
    owners: dict[str, tuple[int, str]] = {}
    wanted = {inode for _, inode in sockets if inode != "0"}
    if wanted:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{entry}/fd/{fd}")
                        if link.startswith("socket:[") and link[8:-1] in wanted:
                            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                            owners[link[8:-1]] = (int(entry), cmd[:80])
    return [(state, *owners.get(inode, (None, ""))) for state, inode in sockets]


def port_holders(port: int) -> list[str]:
    """What holds local TCP ``port``: one line per socket, with its state and owning process."""
    return [
        f"{state} pid {pid} ({cmd})" if pid is not None else f"{state} no process (closing)"
        for state, pid, cmd in port_sockets(port)
    ]


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    """True once ``port`` can be bound. While only sockets no live process owns hold it (a killed
    process still being torn down by the kernel), wait up to ``timeout``; a live owner fails at once."""
    deadline = time.monotonic() + timeout
    while port_in_use(host, port):
        sockets = port_sockets(port)
        if time.monotonic() >= deadline or any(pid is not None for _, pid, _ in sockets):
            return False
        time.sleep(0.2)
    return True


def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.25,
) -> str:
    """Poll ``check`` until true ("ok"), the process dies ("died") or ``timeout`` passes ("timeout")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return "ok"
        except Exception:  # noqa: BLE001 - a probe that raises just is not ready yet
            pass
        if not alive():
            return "died"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(interval)


def log_tail(logfile: Path, lines: int = 15) -> str:
    try:
        text = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])
