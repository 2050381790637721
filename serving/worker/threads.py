"""Torch thread settings of the worker's threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run this thread's torch work inside on one OpenMP thread (the count before is restored after).
    For every thread other than the engine's that touches tensors (loading, attaching, warming): GNU
    OpenMP keeps a team of workers for each thread that ran a parallel region, and once its workers
    outnumber the cores it stops spinning and parks them between regions, so a loader thread's idle
    team made every decode step's matmuls wait on futexes (measured on 2 cores: a decode step 35 %
    slower in the engine thread after a 2-thread load elsewhere; a single stream 13.7 tokens/s
    against 22 without)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
