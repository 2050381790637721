"""Stop strings in streamed text: where one begins, and how much text may be sent while a stop string
could still be forming at its end. Pure string logic of the engine, tested on its own."""

from __future__ import annotations


def find_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Index where the first stop string begins, searching only text not yet sent (and its overlap)."""
    best = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, max(0, sent - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def safe_end(text: str, stops: list[str]) -> int:
    """How much of ``text`` can be sent: hold back an unfinished UTF-8 character and any tail that
    could still grow into a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return end
