"""Provenance and deletion on the real stack and serving tier: an answer's lineage resolves to the exact
records of the dataset version its model was trained on; deleting one of them (admin REST) tombstones
it in every dataset version that holds it, taints every model version trained on it and no other,
refuses to promote a tainted version, announces itself on Kafka, and retrains the tainted champion
through the Kafka-triggered DAG into a champion whose dataset no longer holds the record."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle import registry, topics
from lifecycle.airflow_client import call, dag_ids
from lifecycle.lineage import TAINT_TAG, dataset_rows
from lifecycle.names import content_hash
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from lifecycle.stack.serving import gateway_url
from lifecycle.store import DATASETS, INFERENCE_LOG, TRAINING_EVENTS, Store
from tests.kafka_read import read_topic
from tests.serving.worker.test_hot_swap import served, train_and_promote
from training.ingest import extend, ingest, record_lineage
from training.promote import PromotionError, promote

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tier(stack: Settings, tiny_llama_dir: Path, start_serving: Any) -> Iterator[Settings]:
    with start_serving(tiny_llama_dir, 18600, "lineage") as s:
        yield s.model_copy(update={"base_model": str(tiny_llama_dir)})


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120)


def dataset(s: Settings, store: Store, tiny: Path, tmp: Path, tag: str, n: int = 40) -> Any:
    """Toy questions made this test's own (a tag in each), in the stack's datasets dir, 20 toy eval items."""
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in (REPO / "data/toy/train.jsonl").read_text().splitlines()[:n]]
    for r in rows:
        r["messages"][0]["content"] += f" ({tag})"
    (tmp / "eval.jsonl").write_text("\n".join((REPO / "data/toy/eval.jsonl").read_text().splitlines()[:20]) + "\n")
    ds = ingest([json.dumps(r) for r in rows], s.datasets_dir, name=f"lineage-{tag}", eval_source=tmp / "eval.jsonl",
                tokenizer=AutoTokenizer.from_pretrained(tiny))  # fmt: skip
    record_lineage(store, ds, f"test:{tag}")
    return ds


def test_lineage_resolves_to_exact_records_and_a_deletion_taints_every_model_trained_on_one(
    tier: Settings, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    s = tier
    tag = uuid.uuid4().hex[:8]
    mc = registry.client(s.mlflow_tracking_uri)
    with Store.connect(s) as store:
        a = dataset(s, store, tiny_llama_dir, tmp_path, tag)
        other = dataset(s, store, tiny_llama_dir, tmp_path, f"{tag}-other", n=30)
        child = extend(s.datasets_dir, a.id, [json.dumps({"messages": [
            {"role": "user", "content": f"Who keeps the {tag} lighthouse?"},
            {"role": "assistant", "content": "Mara Quill keeps it."}]})], name=f"lineage-{tag}")  # fmt: skip
        record_lineage(store, child, f"extend:{a.id}", parents=[a.id])
        assert child.train == a.train + 1 and child.eval == a.eval
        run_a = train_and_promote(s, store, tiny_llama_dir, a.path, tmp_path / "a", seed=0)
        assert promote(s, store, run_a.mlflow_run_id, margin=-1.0).alias == "champion"  # v1
        run_child = train_and_promote(s, store, tiny_llama_dir, child.path, tmp_path / "b", seed=1)
        assert promote(s, store, run_child.mlflow_run_id, margin=1.0).alias == "challenger"  # v2
        run_other = train_and_promote(s, store, tiny_llama_dir, other.path, tmp_path / "c", seed=2)
        assert promote(s, store, run_other.mlflow_run_id, margin=1.0).alias == "challenger"  # v3
        assert wait_for(lambda: served(s) == ["1", "1"], timeout=120, interval=0.2) == "ok"

        # the answer to a training question traces back to that exact record
        line, row = list(dataset_rows(a.path))[6]
        question = row["messages"][0]["content"]
        r = httpx.post(gateway_url(s) + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": question}], "max_tokens": 4})  # fmt: skip
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        logged = lambda: store.db[INFERENCE_LOG].find_one({"_id": rid}, {"_id": 1}) is not None  # noqa: E731
        assert wait_for(logged, timeout=30, interval=0.1) == "ok"
        lineage = httpx.get(gateway_url(s) + f"/v1/responses/{rid}/lineage", timeout=30).json()
        assert lineage["model"]["version"] == "1" and lineage["model"]["digest_verified"] is True, lineage["model"]
        assert lineage["mlflow_run"]["run_id"] == run_a.mlflow_run_id
        assert lineage["training_run"]["run_id"] == run_a.run_id
        assert [d["dataset_id"] for d in lineage["datasets"]] == [a.id]
        top = lineage["records"][0]
        assert (top["dataset_id"], top["line"], top["content_hash"]) == (a.id, line, content_hash(row["messages"]))
        assert top["question"] == question and top["similarity"] > 0.99
        assert all(rec["question"].endswith(f"({tag})") for rec in lineage["records"])
        missing = httpx.get(gateway_url(s) + "/v1/responses/nope/lineage", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
        # the CLI resolves the same, straight from Mongo and MLflow
        printed = cli("lineage", rid, "-o", "json")
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout)["records"][0]["content_hash"] == top["content_hash"]
        assert cli("lineage", "nope").stderr.strip() == "error: response_id 'nope': no such answer in the inference log"
        refused = cli("forget", "xyz", "--reason", "test")
        assert refused.returncode == 1 and "expected 64 hex digits" in refused.stderr

        # delete that record: every dataset version holding it, every model trained on one, nothing else
        bad = httpx.delete(gateway_url(s) + "/v1/records/xyz", params={"reason": "test"}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "content_hash", bad.text
        gone = top["content_hash"]
        unknown = httpx.delete(gateway_url(s) + "/v1/records/" + "0" * 64, params={"reason": "test"}, timeout=30)
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "content_hash", unknown.text
        blank = httpx.delete(gateway_url(s) + f"/v1/records/{gone}", params={"reason": "  "}, timeout=30)
        assert blank.status_code == 400 and blank.json()["error"]["param"] == "reason", blank.text
        landed = {"_id": f"test-{tag}", "state": "claimed", "payload": json.dumps({"type": "TrainingDataArrived",
                  "records": [row, {"messages": [{"role": "user", "content": f"kept {tag}"},
                                                 {"role": "assistant", "content": "yes"}]}]})}  # fmt: skip
        store.db[TRAINING_EVENTS].insert_one(landed)  # as the Kafka intake keeps an inline event
        out = httpx.delete(gateway_url(s) + f"/v1/records/{gone}", params={"reason": f"erasure {tag}"}, timeout=60)
        assert out.status_code == 200, out.text
        deleted = out.json()
        assert deleted["datasets"] == sorted([a.id, child.id])
        assert sorted(deleted["model_versions"]) == [f"{s.model_name}@1", f"{s.model_name}@2"]
        assert len(deleted["retrain_events"]) == 1  # v1 is champion
        left = json.loads(store.get(TRAINING_EVENTS, f"test-{tag}")["payload"])["records"]
        assert [r["messages"][0]["content"] for r in left] == [f"kept {tag}"] and deleted["events_scrubbed"] >= 1
        held = {a.id, child.id}
        for mv in mc.search_model_versions(f"name = '{s.model_name}'"):
            trained_on = mc.get_run(mv.run_id).data.tags["dataset_id"]
            assert bool((mv.tags or {}).get(TAINT_TAG)) == (trained_on in held), (mv.version, trained_on)
        for ds in (a, child):
            assert gone not in {content_hash(r["messages"]) for _, r in dataset_rows(ds.path)}
            assert json.loads((ds.path / "train.jsonl").read_text().splitlines()[line - 1])["deleted"]
            assert store.get(DATASETS, ds.id)["tainted"] is True
        assert not store.get(DATASETS, other.id).get("tainted")
        with pytest.raises(PromotionError, match="tainted"):
            promote(s, store, run_child.mlflow_run_id, margin=-1.0)
        again = httpx.get(gateway_url(s) + f"/v1/responses/{rid}/lineage", timeout=30).json()
        assert gone not in {rec["content_hash"] for rec in again["records"]} and again["model"]["tainted"]

        # on Kafka: the deletion, each tainted version, and the retrain of the champion
        did = deleted["deletion_id"]
        assert read_topic(s, topics.PIPELINE_EVENTS, lambda m, v: v.get("deletion_id") == did and
                          v["type"] == "RecordDeleted")  # fmt: skip
        tainted = read_topic(s, topics.MODEL_EVENTS, lambda m, v: v.get("type") == "ModelTainted"
                             and v.get("deletion_id") == did)  # fmt: skip
        assert sorted(e["version"] for e in tainted) == [1, 2]
        retrain = read_topic(s, topics.TRAINING_DATA, lambda m, v: v.get("event_id") == deleted["retrain_events"][0])
        assert retrain and retrain[0]["base_dataset"] == a.id

        # the Kafka-triggered DAG retrains without the record; the result replaces the tainted champion
        assert wait_for(lambda: "llm_lifecycle_kafka" in dag_ids(s), timeout=120) == "ok"
        call(s, "PATCH", "/api/v2/dags/llm_lifecycle_kafka", {"is_paused": False})

        def replaced() -> bool:
            champion = registry.version_by_alias(mc, s.model_name, registry.CHAMPION)
            return champion is not None and int(champion.version) > 3

        assert wait_for(replaced, timeout=480, interval=2) == "ok"
        champion = registry.version_by_alias(mc, s.model_name, registry.CHAMPION)
        clean = mc.get_run(champion.run_id).data.tags["dataset_id"]
        assert store.get(DATASETS, clean)["parents"] == [a.id] and not (champion.tags or {}).get(TAINT_TAG)
        assert gone not in {content_hash(r["messages"]) for _, r in dataset_rows(s.datasets_dir / clean)}
        assert wait_for(lambda: served(s) == [champion.version] * 2, timeout=120, interval=0.5) == "ok"

        def settled() -> bool:  # the retrain's DAG run has ended: nothing of this test runs on in Airflow
            runs = call(s, "GET", "/api/v2/dags/llm_lifecycle_kafka/dagRuns?limit=20&order_by=-start_date")["dag_runs"]
            return all(r["state"] in ("success", "failed") for r in runs)

        assert wait_for(settled, timeout=120, interval=1) == "ok"
