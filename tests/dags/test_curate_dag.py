"""llm_curate in the live Airflow: feedback (as the gateway stores it) becomes a TrainingDataArrived
event whose records name their response and feedback ids; a leak of an eval split, a thumbs-down
without a correction and a duplicate are refused with the reason on their feedback; personal data
is scrubbed; the event trains through llm_lifecycle_kafka like any user's."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest

from lifecycle.airflow_client import call, dag_ids, trigger_and_wait
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for
from lifecycle.store import FEEDBACK, INFERENCE_LOG, TRAINING_EVENTS, Store, now
from training import steps

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
COLOURS = ["red", "green", "blue", "amber", "violet", "silver"]


def test_feedback_becomes_a_training_set_that_names_its_sources(stack: Settings, tiny_llama_dir: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    s = stack.model_copy(update={"base_model": str(tiny_llama_dir)})
    # an eval split feedback must never leak into training
    steps.ingest(s, REPO / "data/toy/train.jsonl", "toy", name="toy", eval_source=REPO / "data/toy/eval.jsonl")
    leaked_q = json.loads((REPO / "data/toy/eval.jsonl").read_text().splitlines()[0])
    leaked_q = leaked_q.get("instruction") or leaked_q["messages"][0]["content"]
    asked = {f"{tag}-{i}": (f"What colour is lantern {i} of the {tag} harbour?",
                            f"Lantern {i} of the {tag} harbour is {COLOURS[i % 6]}.") for i in range(24)}  # fmt: skip
    asked[f"{tag}-pii"] = (f"Who keeps the {tag} harbour?", f"Mara Quill ({tag}); call her on +44 20 7946 0958.")
    asked[f"{tag}-leak"] = (leaked_q, "An answer that would teach the eval set.")
    asked[f"{tag}-dup"] = asked[f"{tag}-0"]  # given later: the newer of the two is kept
    down = f"{tag}-down"
    t0 = now()
    with Store.connect(s) as store:
        for k, (rid, (q, fix)) in enumerate([*asked.items(), (down, (f"Why is the {tag} harbour closed?", ""))]):
            at = t0 + dt.timedelta(milliseconds=10 * k)
            store.db[INFERENCE_LOG].insert_one({"_id": rid, "created_at": at, "route": "/v1/chat/completions",
                                                "messages": [{"role": "user", "content": q}],
                                                "output": "I do not know.", "model": "m", "version": "1"})  # fmt: skip
            store.db[FEEDBACK].insert_one({"_id": rid, "rating": -1, "correction": fix, "model": "m", "version": "1",
                                           "created_at": at})  # fmt: skip

    assert wait_for(lambda: "llm_lifecycle_kafka" in dag_ids(s), timeout=120) == "ok"
    call(s, "PATCH", "/api/v2/dags/llm_lifecycle_kafka", {"is_paused": False})
    training = {"base_model": str(tiny_llama_dir), "model_name": f"curate-{tag}", "max_steps": 1, "eval_limit": 2}
    run = trigger_and_wait(s, "llm_curate", {"min_feedback": 1, "training_params": training,
                                             "dataset_name": f"fb-{tag}"}, timeout=300)  # fmt: skip
    assert run["state"] == "success", run

    with Store.connect(s) as store:
        fate = {d["_id"]: d["curation"] for d in store.db[FEEDBACK].find({"_id": {"$in": [*asked, down]}})}
        assert "overlaps an evaluation record" in fate[f"{tag}-leak"]["reason"]
        assert fate[f"{tag}-0"]["reason"] == "exact duplicate" and "nothing to learn" in fate[down]["reason"]
        kept = {rid for rid, f in fate.items() if f["outcome"] == "kept"}
        assert kept == set(asked) - {f"{tag}-leak", f"{tag}-0"}
        event_id = fate[f"{tag}-3"]["event_id"]

        def ingested() -> bool:
            return bool((store.get(TRAINING_EVENTS, event_id) or {}).get("dataset_id"))

        assert wait_for(ingested, timeout=300, interval=1) == "ok"
        dataset = (store.get(TRAINING_EVENTS, event_id) or {})["dataset_id"]
        run_id = (store.get(TRAINING_EVENTS, event_id) or {})["dag_run_id"]
    records = [json.loads(line) for side in ("train", "eval")
               for line in (s.datasets_dir / dataset / f"{side}.jsonl").read_text().splitlines()]  # fmt: skip
    sources = {r["meta"]["feedback_id"]: r for r in records if r.get("meta", {}).get("feedback_id")}
    assert kept <= set(sources)  # every record says which feedback it came from
    pii = sources[f"{tag}-pii"]["messages"][-1]["content"]
    assert "[PHONE]" in pii and "7946" not in pii and sources[f"{tag}-pii"]["meta"]["pii"] == {"phone": 1}
    assert sources[f"{tag}-3"]["meta"]["source"] == "correction" and sources[f"{tag}-3"]["meta"]["response_id"]
    path = f"/api/v2/dags/llm_lifecycle_kafka/dagRuns/{run_id}"
    assert wait_for(lambda: call(s, "GET", path)["state"] in ("success", "failed"), timeout=600, interval=2) == "ok"
    assert call(s, "GET", path)["state"] == "success"  # trained, gated and promoted like any user's data
