"""What every local-stack service is: how to prepare, start, probe and describe it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.settings import Settings


class StackError(RuntimeError):
    """The local stack could not do what was asked; the message says which service and why."""


class MissingToolError(StackError):
    """A program the stack needs (java, mvn, go, …) is not installed."""


@dataclass
class Launch:
    """How to start one service process."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class Service:
    """One process of the local stack. Subclasses fill in the blanks."""

    name: str = ""
    #: Services that must answer before this one starts.
    after: tuple[str, ...] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- where things live ------------------------------------------------------------------
    @property
    def pidfile(self) -> Path:
        return self.settings.run_dir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.settings.logs_dir / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.settings.service_data_dir(self.name)

    # -- what subclasses provide -------------------------------------------------------------
    def ports(self) -> list[int]:
        """Ports this service listens on (checked free before it starts)."""
        return []

    @property
    def address(self) -> str:
        return ""

    def required_tools(self) -> list[tuple[str, str]]:
        """(program, how to install it) pairs needed by ``prepare`` and ``launch``."""
        return []

    def prepare(self) -> None:
        """Fetch binaries and initialise storage, once. Must be idempotent."""

    def launch(self) -> Launch:
        raise NotImplementedError

    def probe(self) -> bool:
        """True when the service really answers (not just when its port is open)."""
        raise NotImplementedError

    def after_start(self) -> None:
        """Work once the service answers (create topics, …). Must be idempotent."""

    def version(self) -> str:
        return ""

    # -- shared helpers ----------------------------------------------------------------------
    def check_tools(self) -> None:
        for program, hint in self.required_tools():
            if shutil.which(program) is None:
                raise MissingToolError(f"{self.name}: `{program}` is not installed or not on PATH; {hint}")
