"""Own data: JSONL, JSON and Parquet, a file or a folder, local or on S3 (a real S3-compatible server,
moto's, started here); chat, instruction and prompt-completion shapes; bad records named by file and
line, the rest kept; sources outside what the settings allow refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.settings import load_settings
from lifecycle.stack.process import wait_for
from training.ingest import IngestError, ingest, load_split
from training.sources import SourceError, read_items
from training.steps import StepError, check_source

CHAT = [{"messages": [{"role": "user", "content": f"Chat {i}?"}, {"role": "assistant", "content": f"C{i}."}]}
        for i in range(12)]  # fmt: skip
INSTRUCTION = [{"instruction": f"Do {i}", "input": "now", "output": f"Done {i}."} for i in range(12)]
PROMPT = [{"prompt": f"Prompt {i}", "completion": f"Completion {i}."} for i in range(12)]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def data_folder(root: Path) -> Path:
    """One folder, three formats, three shapes, one bad record in each file, and a file to skip."""
    root.mkdir(parents=True)
    (root / "a-chat.jsonl").write_text("\n".join(json.dumps(r) for r in CHAT) + "\n{broken\n")
    (root / "b-instruction.json").write_text(json.dumps([*INSTRUCTION, {"instruction": "no output"}]))
    write_parquet(root / "c-prompt.parquet", [*PROMPT, {"prompt": "no completion", "completion": None}])
    (root / "README.md").write_text("not data")
    return root


def test_a_folder_of_three_formats_and_shapes(tmp_path: Path) -> None:
    src = data_folder(tmp_path / "data")
    ds = ingest(src, tmp_path / "ds", eval_fraction=0.0)
    assert ds.train == 36 and ds.eval == 0
    assert [(r.file, r.line) for r in ds.rejected] == [("a-chat.jsonl", 13), ("b-instruction.json", 13),
                                                         ("c-prompt.parquet", 13)]  # fmt: skip
    assert ds.rejected[2].where == "train c-prompt.parquet:row 13"
    assert "field 'completion' must be a string" in ds.rejected[2].reason
    users = {r.messages[0]["content"] for r in load_split(ds.path, "train")}
    assert {"Chat 0?", "Do 0\n\nnow", "Prompt 0"} <= users


def test_sources_that_cannot_be_read_say_why(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file or folder"):
        ingest(tmp_path / "missing.jsonl", tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"a folder with no \.jsonl, \.json, \.parquet files"):
        ingest(tmp_path / "empty", tmp_path / "ds")
    (tmp_path / "bad.json").write_text('[{"prompt": "x",')
    with pytest.raises(IngestError, match=r"bad\.json: invalid JSON at line 1"):
        ingest(tmp_path / "bad.json", tmp_path / "ds")
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(json.dumps(r) for r in CHAT))
    with pytest.raises(SourceError, match="over the limit of 100"):
        list(read_items(str(big), max_bytes=100))


def test_local_sources_stay_out_of_the_state_dir_and_inside_the_data_roots(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "home", data_roots=str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    assert check_source(s, f"file://{tmp_path}/data/x.jsonl") == str(tmp_path / "data/x.jsonl")
    with pytest.raises(StepError, match="may not be read from the state dir"):
        check_source(s, tmp_path / "home/datasets/ds-1/eval.jsonl")
    with pytest.raises(StepError, match="outside LIFECYCLE_DATA_ROOTS"):
        check_source(s, "/etc/passwd")
    with pytest.raises(StepError, match="outside LIFECYCLE_DATA_ROOTS"):
        check_source(s, f"{tmp_path}/data/../elsewhere.jsonl")
    assert check_source(s, "s3://bucket/prefix/") == "s3://bucket/prefix/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on a free port; its endpoint URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        state = wait_for(up, timeout=60, alive=lambda: proc.poll() is None, interval=0.2)
        assert state == "ok", f"moto server {state}: {log.read_text()[-2000:]}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_folder_on_s3(s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": s3}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3)
    client.create_bucket(Bucket="training")
    local = data_folder(tmp_path / "data")
    for f in local.iterdir():
        client.upload_file(str(f), "training", f"tickets/2026/{f.name}")
    ds = ingest("s3://training/tickets/", tmp_path / "ds", eval_fraction=0.0, source_label="s3://training/tickets/")
    assert ds.train == 36 and [r.file for r in ds.rejected] == ["2026/a-chat.jsonl", "2026/b-instruction.json",
                                                                 "2026/c-prompt.parquet"]  # fmt: skip
    same = ingest(local, tmp_path / "ds", eval_fraction=0.0)
    assert same.id == ds.id  # the same records give the same dataset wherever they were read from
    with pytest.raises(IngestError, match="no such file or folder"):
        ingest("s3://training/nothing-here/", tmp_path / "ds")
    assert os.environ["AWS_ENDPOINT_URL"] == s3
