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


def _on_a_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal, as in a shell; returns (exit code, output)."""
    import os
    import pty
    import select

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for {timeout} s: {b''.join(chunks)[-2000:]!r}")
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_training_shows_a_progress_bar_on_a_terminal_and_plain_lines_when_piped(
    stack: Settings, smollm2_dir: Path, tiny_llama_dir: Path
) -> None:
    tag = uuid.uuid4().hex
    rows = [{"instruction": f"progress question {i} {tag}?", "output": f"answer {i}"} for i in range(40)]
    made = lifecycle("ingest", "-", "--name", "cli-progress", "-o", "json",
                     stdin="".join(json.dumps(r) + "\n" for r in rows))  # fmt: skip
    assert made.returncode == 0, made.stderr
    dataset = json.loads(made.stdout)
    assert dataset["new"] and dataset["train"] + dataset["eval"] == 40 and dataset["dataset_id"].startswith("ds-")
    flags = ["--base-model", str(tiny_llama_dir), "--max-steps", "8", "--dtype", "float32", "--checkpoint-every", "0"]

    code, shown = _on_a_terminal(["train", dataset["dataset_id"], *flags])
    assert code == 0, shown[-3000:]
    assert "training" in shown and "━" in shown and "ETA" in shown and "8/8" in shown, shown[-3000:]
    assert "\x1b[" in shown  # drawn and redrawn in place
    assert "\nstep 8/8" not in shown.replace("\r", "\n").replace("  step", "step")  # the bar, not step lines

    piped = lifecycle("train", dataset["dataset_id"], *flags, "-o", "json")
    assert piped.returncode == 0, piped.stderr[-3000:]
    for stream in (piped.stdout, piped.stderr):
        assert "\x1b[" not in stream and "━" not in stream and "\r" not in stream
    assert "step 8/8 loss" in piped.stderr  # the same progress, as plain lines on stderr
    result = json.loads(piped.stdout)  # stdout holds only the result
    assert result["run_id"].startswith("tr-") and result["metrics"]["steps"] == 8
    assert result["mlflow_url"].endswith(f"/#/runs/{result['mlflow_run_id']}")

    listed = lifecycle("runs", "list", "-n", "5", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    runs = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert runs[result["run_id"]]["status"] == "succeeded"
    assert runs[result["run_id"]]["dataset_id"] == dataset["dataset_id"]
    assert runs[result["run_id"]]["mlflow_run_id"] == result["mlflow_run_id"]
    datasets = json.loads(lifecycle("datasets", "list", "-o", "json").stdout)
    assert dataset["dataset_id"] in {d["dataset_id"] for d in datasets}
    log = lifecycle("logs", result["run_id"], "--tail", "3")
    assert log.returncode == 0 and "done: 8 steps" in log.stdout, log.stdout + log.stderr


def test_version_models_list_and_trigger_for_scripts(stack: Settings) -> None:
    from importlib.metadata import version

    assert lifecycle("--version").stdout.strip() == f"lifecycle {version('llm-lifecycle')}"
    models = lifecycle("models", "list", "-o", "json")
    assert models.returncode == 0 and isinstance(json.loads(models.stdout), list), models.stderr

    # a paused DAG is not triggered into a run that would wait for ever
    paused = lifecycle("trigger", "llm_lifecycle_retrain")
    assert paused.returncode == 1 and "is paused" in paused.stderr and "--unpause" in paused.stderr
    bad = lifecycle("trigger", "llm_lifecycle", "-p", "epochs=many", "-p", "dataset_path=/x.jsonl", "--unpause")
    assert bad.returncode == 1 and "epochs" in bad.stderr, bad.stderr
    done = lifecycle("trigger", "stack_check", "--unpause", "--timeout", "300", "-o", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(done.stdout)
    assert run["state"] == "success" and run["url"].startswith("http://") and set(run["tasks"].values()) == {"success"}
