"""Hot swap end to end: a version promoted through the real gate (MLflow registry + Kafka) reaches two
running workers under load with no failed request; a version whose weights do not match their
registered digests is refused with ``ModelLoadFailed`` while the old version keeps answering; a worker
that comes back under its old name takes over its model-event subscription at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle import topics
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from lifecycle.stack.serving import gateway_url
from lifecycle.store import Store
from serving.worker.model_events import ModelEventConsumer
from tests.kafka_read import read_topic
from training.config import TrainConfig
from training.evaluate import evaluate
from training.launch import run_training
from training.promote import promote

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def swapping(stack: Settings, tiny_llama_dir: Path, start_serving: Any) -> Iterator[Settings]:
    with start_serving(tiny_llama_dir, 18400, "swap") as s:
        yield s


def served(s: Settings) -> list[str]:
    return [w["version"] for w in httpx.get(gateway_url(s) + "/readyz", timeout=10).json()["workers"]]


def train_and_promote(s: Settings, store: Store, tiny: Path, dataset: Path, out: Path, seed: int) -> Any:
    cfg = TrainConfig(base_model=str(tiny), dataset=str(dataset), max_steps=2, checkpoint_every=0,
                      micro_batch_size=16, dtype="float32", out_dir=str(out), seed=seed)  # fmt: skip
    run = run_training(s, cfg, store=store)
    evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2)
    return run


class Load:
    """Requests in a loop from 4 threads: (start, end, status, version) of each."""

    def __init__(self, s: Settings) -> None:
        self.url = gateway_url(s) + "/v1/generate"
        self.results: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                r = httpx.post(self.url, json={"prompt": "Tell me a story", "max_tokens": 16}, timeout=120)
            except httpx.HTTPError as exc:  # a reset or a timeout is a failed request, not a dead thread
                self.results.append((t0, time.monotonic(), -1, repr(exc)))
                continue
            self.results.append((t0, time.monotonic(), r.status_code, r.json().get("version", "")))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_promotion_swaps_under_load_and_a_bad_digest_is_refused(
    swapping: Settings, tiny_llama_dir: Path, toy_dataset: Path, tmp_path: Path
) -> None:
    s = swapping
    assert served(s) == ["local", "local"]
    with Store.connect(s) as store:
        first = train_and_promote(s, store, tiny_llama_dir, toy_dataset, tmp_path / "a", seed=0)
        with Load(s) as load:
            assert wait_for(lambda: len(load.results) >= 4, timeout=60) == "ok"
            promote(s, store, first.mlflow_run_id, margin=-1.0, report=print)
            assert wait_for(lambda: served(s) == ["1", "1"], timeout=120, interval=0.1) == "ok"
            swapped_at = time.monotonic()
            assert wait_for(lambda: sum(r[0] > swapped_at for r in load.results) >= 4, timeout=60) == "ok"
        assert [r for r in load.results if r[2] != 200] == []
        assert {r[3] for r in load.results if r[0] > swapped_at} == {"1"}
        assert {r[3] for r in load.results} == {"local", "1"}

        # The second version's adapter is altered in the artifact store after registration.
        second = train_and_promote(s, store, tiny_llama_dir, toy_dataset, tmp_path / "b", seed=1)
        adapters = list((s.home / "data").rglob(f"*{second.model_uri.split('/')[-1]}*/**/adapter_model.safetensors"))
        assert len(adapters) == 1, adapters
        with adapters[0].open("r+b") as fh:
            fh.seek(-8, 2)
            fh.write(b"tampered")
        promote(s, store, second.mlflow_run_id, margin=-1.0, report=print)

        def failures() -> list[dict[str, Any]]:
            return read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("type") == "ModelLoadFailed"
                              and v.get("model_name") == s.model_name)  # fmt: skip

        assert wait_for(lambda: len(failures()) == 2, timeout=120, interval=1) == "ok"
        assert all(f["version"] == 2 and "sha256 of adapter_model.safetensors" in f["error"] for f in failures())
        assert served(s) == ["1", "1"]
        r = httpx.post(gateway_url(s) + "/v1/generate", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200 and r.json()["version"] == "1"

        # Requests may name a version or an alias; a version that fails its digest check is not served.
        def ask(model: str) -> httpx.Response:
            body = {"prompt": "hi", "max_tokens": 2, "model": model}
            return httpx.post(gateway_url(s) + "/v1/generate", json=body, timeout=60)

        assert ask(f"{s.model_name}@1").json()["version"] == "1"
        assert ask(f"{s.model_name}:champion").json()["version"] == "1"
        tampered = ask(f"{s.model_name}@2")
        assert tampered.status_code == 404 and "sha256 of adapter_model.safetensors" in tampered.text
        bad = ask(f"{s.model_name}@two")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
        ids = {m["id"]: m for m in httpx.get(gateway_url(s) + "/v1/models", timeout=10).json()["data"]}
        assert ids[s.model_name]["versions"] == ["1"] and ids[f"{s.model_name}@1"]["workers"] == 2
        assert len(ids[f"{s.model_name}@1"]["digest"]) == 64 and f"{s.model_name}@2" not in ids


def test_a_worker_back_under_its_name_takes_over_its_subscription_and_a_duplicate_name_is_reported(
    stack: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"w-{time.monotonic_ns()}"
    crashed, back, duplicate = (
        ModelEventConsumer(stack, name, lambda: None, lambda slot: None, lambda n, v: None) for _ in range(3)
    )
    crashed.start()
    assert crashed._assigned.is_set()
    # A crashed worker: it no longer reads, its member is still in the group. Joining as a new member
    # would wait for that one to be dropped (minutes); under the same group.instance.id it is at once.
    crashed.background.stopping.set()
    assert crashed.background.thread is not None
    crashed.background.thread.join()
    t0 = time.monotonic()
    back.start(timeout=30)
    joined = time.monotonic() - t0
    assert back._assigned.is_set() and joined < 15, joined
    # Two live workers with one name: the older one is fenced, its watcher stops and says why.
    with caplog.at_level(logging.ERROR, logger="lifecycle.consumer"):
        duplicate.start(timeout=30)
        assert wait_for(lambda: not back.background.alive(), timeout=30) == "ok"
    assert any(name in r.message and "consumer stopped" in r.message for r in caplog.records)
    assert duplicate.background.alive()
    for w in (duplicate, back, crashed):
        w.stop()
