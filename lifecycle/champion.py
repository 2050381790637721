"""Moving a model's ``champion`` alias: one writer at a time, and only from the version the caller
decided against.

Every move (a promotion, a rollout's end, a rollback) holds the lease ``alias:<model>`` in Mongo
(lifecycle/lease.py), reads the alias under it and compares it with what the caller expects: a gate
that compared the candidate with v3 may not move the alias once it points at v4 (two promotions racing
would otherwise leave it on whichever wrote last, possibly the lower version). Under the same lease
the caller's event is published before the alias moves (workers wait for the alias to match an event,
see serving/worker/model_events.py).
"""

from __future__ import annotations

from collections.abc import Callable

from lifecycle import lease, registry
from lifecycle.settings import Settings
from lifecycle.store import Store


class AliasMoved(RuntimeError):
    """The alias is not where the caller's decision assumed; the message says where it is."""


def current(settings: Settings, name: str) -> int:
    """The champion's version number, 0 when the model has none."""
    found = registry.version_by_alias(registry.client(settings.mlflow_tracking_uri), name, registry.CHAMPION)
    return int(found.version) if found is not None else 0


def move(
    settings: Settings, store: Store, name: str, version: int, *, expected: int | None,
    before: Callable[[], None] | None = None, wait: float = 60.0,
) -> bool:  # fmt: skip
    """Point ``champion`` of ``name`` at ``version`` if it is at ``expected`` now (0: no champion;
    None: wherever it is). ``before`` runs under the lease just before the move (publish the event).
    False when the alias is at ``version`` already (nothing done); ``AliasMoved`` when it is elsewhere."""
    with lease.held(store, f"alias:{name}", wait=wait):
        now_at = current(settings, name)
        if now_at == version:
            return False
        if expected is not None and now_at != expected:
            at = f"v{now_at}" if now_at else "no version"
            was = f"v{expected}" if expected else "no champion"
            raise AliasMoved(f"{name}'s champion is {at}, not {was} as this decision assumed")
        if before is not None:
            before()
        registry.client(settings.mlflow_tracking_uri).set_registered_model_alias(name, registry.CHAMPION, str(version))
        return True
