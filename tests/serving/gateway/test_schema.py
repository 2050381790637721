"""Schemathesis against the gateway's OpenAPI document: every documented operation but job creation,
positive and negative examples, and no answer is a 5xx."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lifecycle.settings import Settings
from lifecycle.stack.serving import gateway_url

pytestmark = pytest.mark.stack


def test_schemathesis_finds_no_server_error(
    stack: Settings, tiny_llama_dir: Path, start_serving: Any, tmp_path: Path
) -> None:
    # Every documented operation but job creation (its items would queue long generations behind the
    # other tests), positive and negative examples, checked for 5xx. Its own tier, on a copy of the tiny
    # model whose context is 96 tokens: a generated max_tokens of up to 1,024 stops there (the random
    # model never ends an answer), so ~100 requests take seconds of generation, not minutes. A module of
    # its own: two tiers on one test stack cannot run at once (they share the gateway's pid file and log).
    small = tmp_path / "tiny-96"
    shutil.copytree(tiny_llama_dir, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 96}))
    with start_serving(small, 18700, "schema") as s:
        _schemathesis(s, tmp_path)


def _schemathesis(serving: Settings, tmp_path: Path) -> None:
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "run", gateway_url(serving) + "/openapi.json",
        "--checks", "not_a_server_error", "--max-examples", "15", "--exclude-path", "/v1/jobs",
        "--request-timeout", "120", "--seed", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    found = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert found and int(found[1]) >= 100 and found[1] == found[2], done.stdout[-2000:]
