"""A lease in Mongo: one holder at a time for a named thing (``alias:<model>``), with an expiry so that a
holder that died does not block the others for ever.

Taken by a unique insert (``_id`` = the key): atomic on every MongoDB-protocol server. A filtered
``update_one`` is not a compare-and-set on FerretDB's SQLite backend (four racing updates with one filter
all matched), so nothing here decides by a filtered update. An expired lease is taken over by whoever
wins a second unique insert, ``<key>#takeover:<token>``, naming the exact lease it replaces: of many
waiters exactly one deletes it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from lifecycle.store import LEASES, Store, now


class LeaseError(RuntimeError):
    """The lease stayed held by another holder past the wait; the message names it."""


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def held(store: Store, key: str, *, ttl: float = 120.0, wait: float = 60.0, poll: float = 0.2) -> Iterator[str]:
    """Hold ``key`` for the body (its token is yielded); wait up to ``wait`` seconds for it."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        expires = now() + dt.timedelta(seconds=ttl)
        if store.insert_once(LEASES, {"_id": key, "token": token, "holder": holder_name(), "expires": expires}):
            break
        current = store.get(LEASES, key)
        if current is not None and current["expires"] < now():
            claim = {"_id": f"{key}#takeover:{current['token']}", "expires": expires}
            if store.insert_once(LEASES, claim):
                store.db[LEASES].delete_one({"_id": key, "token": current["token"]})
            continue
        if time.monotonic() > deadline:
            who = current.get("holder", "?") if current else "?"
            raise LeaseError(f"{key} is held by {who} (until {current['expires'] if current else '?'}); "
                             f"waited {wait:.0f} s")  # fmt: skip
        time.sleep(poll)  # the poll interval of the wait, bounded by the deadline above
    try:
        yield token
    finally:
        store.db[LEASES].delete_one({"_id": key, "token": token})
        store.db[LEASES].delete_many({"_id": {"$regex": f"^{re.escape(key)}#takeover:"}, "expires": {"$lt": now()}})
