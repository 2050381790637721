"""Hot swap: a worker serves what the registry's ``champion`` alias names, and follows it.

Events on ``lifecycle.model-events`` (``ModelPromoted`` / ``ModelRolledBack``) only say *when* to look:
the worker then reads the alias (waiting a few seconds for it to reach the event's version, since a
promotion publishes before it moves the alias) and loads what the alias names. A forged or replayed
event moves nothing, and a worker restarted or one that missed an event serves the same version as the
others: every ``LIFECYCLE_ALIAS_POLL_SECONDS`` each worker compares what it serves with the alias.

Each worker has its own consumer group (``lifecycle-worker-<name>``), so every worker sees every
event. A new version is loaded beside the serving one (an adapter on the resident base), then switched
to between decode steps; requests in flight finish on the version they started on. A version that
fails to load is reported as ``ModelLoadFailed`` (once per version and worker) and the old version keeps
serving; the poll does not try it again, a new event for it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lifecycle import events, topics
from lifecycle.background import Background
from lifecycle.consumer import RetryPolicy, consume
from lifecycle.settings import Settings
from lifecycle.v1 import events_pb2
from serving.worker import loader
from serving.worker.engine import ModelSlot

log = logging.getLogger(__name__)


ALIAS_WAIT_S = 20.0  # how long an event waits for the alias to reach its version


def hint(event: Any, model_name: str) -> int | None:
    """The champion version an event announces for ``model_name``, else None (pure; tested on its own)."""
    if getattr(event, "model_name", "") != model_name:
        return None
    if isinstance(event, events_pb2.ModelPromoted):
        return int(event.version) if event.alias in ("", "champion") else None
    if isinstance(event, events_pb2.ModelRolledBack):
        return int(event.version)
    return None


class ModelEventConsumer:
    """Follows ``lifecycle.model-events`` for one worker.

    Given what it needs and nothing more: the settings, the worker's ``name`` (its consumer group and
    static member id), ``serving()`` (the version served now, or None), ``load(name, version)`` (a warm
    slot, see resident.py) and ``switch(slot)`` (serve it)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        serving: Callable[[], str | None],
        switch: Callable[[ModelSlot], None],
        load: Callable[[str, str], ModelSlot],
        champion: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings, self.name, self.serving, self.switch, self.load = settings, name, serving, switch, load
        #: the version the registry's champion alias names now (None: none)
        self.champion = champion or (lambda: loader.resolve_version(settings, settings.model_name, "champion"))
        self.background = Background("model-events", self._run)
        self.watch = Background("alias-watch", self._poll)
        self._follow_lock = threading.Lock()
        self.failed: set[str] = set()  # versions that failed to load here (reported once each)
        self.alias_wait = ALIAS_WAIT_S
        self._assigned = threading.Event()
        self.swaps: list[tuple[str, float]] = []  # (version, seconds from event to serving)
        self.rollout_seq: dict[str, int] = {}  # rollout id -> the last decision applied
        self.prefetched: list[str] = []

    def start(self, timeout: float = 60.0) -> None:
        """Subscribe and wait for the partition assignment, then consume in a thread."""
        from confluent_kafka import Consumer

        # A group of its own per worker, with static membership: a worker restarted after a crash
        # (kill -9, OOM) takes its old member's place at once instead of waiting out the dead member's
        # session (topics.SESSION_TIMEOUT_MS) for the group to rebalance before it can read the
        # champion and serve.
        conf = topics.consumer_config(
            self.settings,
            f"lifecycle-worker-{self.name}",
            **{"auto.offset.reset": "latest", "group.instance.id": self.name, "logger": topics.quiet_logger(__name__)},
        )
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topics.MODEL_EVENTS], on_assign=lambda c, p: self._assigned.set())
        while not self._assigned.is_set() and timeout > 0:
            self.consumer.poll(0.2)  # assignment happens inside poll; nothing is published yet
            timeout -= 0.2
        self.background.start()
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()
        self.background.stop()
        self.consumer.close()

    def _poll(self) -> None:
        while not self.watch.stopping.wait(self.settings.alias_poll_seconds):
            try:
                self.follow(retry_failed=False)
            except Exception as exc:  # noqa: BLE001 - a registry away now is looked at again next time
                log.warning("%s: champion alias not read: %s", self.name, exc)

    def _run(self) -> None:
        # A registry that is briefly away must not cost a promotion: ~6 minutes of tries before giving up.
        policy = RetryPolicy(attempts=10, pause=2.0, max_pause=60.0)
        consume(self.consumer, self.handle, self.background.stopping, settings=self.settings,
                name=f"{self.name} model events", policy=policy)  # fmt: skip

    def handle(self, payload: bytes) -> None:
        try:
            event = events.decode(payload)
        except events.EventError as exc:
            log.warning("%s: skipping a bad model event: %s", self.name, exc)
            return
        if type(event).__name__.startswith("Rollout"):
            self._rollout(event)
            return
        version = hint(event, self.settings.model_name)
        if version is None:
            return
        deadline = time.monotonic() + self.alias_wait  # the promotion moves the alias just after publishing
        while self.champion() != str(version) and time.monotonic() < deadline:
            if self.background.stopping.wait(0.2):
                return
        self.follow(retry_failed=True)

    def follow(self, retry_failed: bool) -> str | None:
        """Serve the version the champion alias names, if it is not served already: the version switched
        to, else None. A load failure is reported (``ModelLoadFailed``) and the old version kept."""
        with self._follow_lock:
            s, serving, version = self.settings, self.serving(), self.champion()
            if version is None or version == serving or (version in self.failed and not retry_failed):
                return None
            t0 = time.monotonic()
            try:
                slot = self.load(s.model_name, version)
            except loader.LoadError as exc:
                log.error("%s: keeping v%s: %s", self.name, serving, exc)
                if version not in self.failed:
                    self.failed.add(version)
                    failed = events.new_event(events_pb2.ModelLoadFailed, model_name=s.model_name,
                                              version=int(version), worker=self.name, error=str(exc))  # fmt: skip
                    events.publish(s, topics.MODEL_EVENTS, s.model_name, failed)
                return None
            self.failed.discard(version)
            self.switch(slot)
            self.swaps.append((version, time.monotonic() - t0))
            log.info("%s: swapped to v%s in %.2fs (download + verify + load)", self.name, version,
                     time.monotonic() - t0)  # fmt: skip
            return version

    def _rollout(self, event: Any) -> None:
        """A rollout's decision, each applied once (by ``seq``: a repeat or an older one is dropped). While
        it routes users or mirrors requests to the challenger, the challenger is kept loaded beside the
        champion so that its first requests do not wait for a download; the champion is not touched
        (its move comes as ``ModelPromoted``)."""
        if event.model_name != self.settings.model_name or event.seq <= self.rollout_seq.get(event.rollout_id, -1):
            return
        self.rollout_seq[event.rollout_id] = event.seq
        if isinstance(event, events_pb2.RolloutStarted | events_pb2.RolloutStepped):
            try:
                self.load(event.model_name, str(event.version))
            except loader.LoadError as exc:  # its requests fail over to the champion, and count against it
                log.error("%s: challenger v%s not loaded: %s", self.name, event.version, exc)
                return
            self.prefetched.append(str(event.version))
