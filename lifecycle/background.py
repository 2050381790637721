"""``Background``: the one way a long-running part of a process (a consumer, a log writer) runs in a
daemon thread of its own and is stopped: ``stopping`` is set, the loop notices, the thread is joined."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    def __init__(self, name: str, loop: Callable[[], None]) -> None:
        self.name, self.loop = name, loop
        #: Set by ``stop()``; the loop polls or waits on it.
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, name=self.name, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=timeout)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()
