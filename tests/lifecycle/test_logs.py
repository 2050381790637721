"""Log lines of the gateway and workers: text, or one JSON object per line (LIFECYCLE_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from lifecycle import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_the_exception(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("INFO", "json")
    log = logging.getLogger("serving.worker.test")
    log.info("loaded %s v%s", "m", 3, extra={"worker": "w-1"})
    log.debug("not at INFO")
    try:
        raise ValueError("bad digest")
    except ValueError:
        log.exception("swap failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "loaded m v3" and first["level"] == "INFO" and first["worker"] == "w-1"
    assert first["logger"] == "serving.worker.test" and first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: bad digest" in second["exc"]


def test_text_logs_stay_plain_lines(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "text")
    logging.getLogger("serving.gateway.test").warning("worker %s is down", "w-2")
    line = capsys.readouterr().err.strip()
    assert line.endswith("WARNING serving.gateway.test: worker w-2 is down") and not line.startswith("{")
