"""The serving tier as `lifecycle serve` starts it: a gateway and two gRPC workers on the tiny Llama,
on ports of their own and under a model name of their own, against the test stack."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.settings import Settings, load_settings
from lifecycle.stack import serving as serving_stack


@contextlib.contextmanager
def serving_tier(model: Path, gateway_port: int, prefix: str) -> Iterator[Settings]:
    env = {"LIFECYCLE_GATEWAY_PORT": str(gateway_port), "LIFECYCLE_WORKER_PORT": str(gateway_port + 51),
           "LIFECYCLE_MODEL_NAME": f"{prefix}-{uuid.uuid4().hex[:6]}"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s = load_settings()
        serving_stack.start_serving(s, 2, str(model), threads=1, report=print)
        try:
            yield s
        finally:
            serving_stack.stop_serving(s, report=print)


@pytest.fixture(scope="session")
def start_serving() -> object:
    """``serving_tier`` for module fixtures: ``with start_serving(model, gateway_port, prefix) as s``."""
    return serving_tier
