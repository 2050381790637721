"""The CLI as a user runs it: progress on success, one-line reasons and non-zero exits on failure."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lifecycle.settings import Settings

pytestmark = pytest.mark.stack


def lifecycle(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=600)  # fmt: skip


def test_ingest_reports_rejected_lines_and_keeps_the_rest(stack: Settings, smollm2_dir: Path, tmp_path: Path) -> None:
    # smollm2_dir: ingest counts tokens with the default base model's tokenizer, pulled into the cache
    tag = uuid.uuid4().hex  # new content, so a new dataset id, every run
    good = [{"instruction": f"cli question {i} {tag}?", "output": f"answer {i}"} for i in range(12)]
    lines = [json.dumps(g) for g in good[:5]] + ["{oops"] + [json.dumps(g) for g in good[5:]]
    done = lifecycle("ingest", "-", "--name", "cli-test", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert "rejected train line 6: invalid JSON" in done.stderr
    assert "(new): " in done.stdout and "1 rejected" in done.stdout
    again = lifecycle("ingest", "-", "--name", "cli-test", stdin="\n".join(lines) + "\n")
    assert "(already ingested)" in again.stdout


def test_failures_exit_non_zero_with_one_line(stack: Settings, smollm2_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    done = lifecycle("ingest", str(bad))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: no valid training records (1 rejected)")

    done = lifecycle("train", "ds-does-not-exist")
    assert done.returncode == 1
    where = stack.home / "datasets"
    assert done.stderr.strip() == (
        f"error: no dataset 'ds-does-not-exist' (neither a folder with train.jsonl nor an id in {where})"
    )

    done = lifecycle("promote")
    assert (done.returncode, done.stderr.strip()) == (1, "error: --run is required (or --rollback)")
