"""Lineage lookup latency: ``GET /v1/responses/{id}/lineage`` on the local stack, against the gateway's
own floor (``GET /healthz`` on the same connection pool) measured in the same run.

    .venv/bin/python bench/lineage.py [--lookups 300] [--answers 50]

A champion is trained (1 step: the weights do not matter, the bookkeeping does) on the toy set ingested
into the stack's datasets dir, so its lineage index holds every training record (``--copies`` makes the
set that many times larger, each copy's questions tagged apart). The gateway (one worker) answers
``--answers`` toy questions; then the bench times ``--lookups`` lineage lookups of those answers
(round robin, after one cold lookup that loads the index) and as many health checks. Each lookup reads
the inference log, the model version and run from MLflow, the training run and dataset versions from
Mongo, scores the question against the index and reads the matching lines of the dataset.
Prints p50/p95 of each and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lookups", type=int, default=300)
    p.add_argument("--answers", type=int, default=50)
    p.add_argument("--copies", type=int, default=1, help="the toy set this many times over (a larger index)")
    args = p.parse_args()
    os.environ.update({"LIFECYCLE_GATEWAY_PORT": "18700", "LIFECYCLE_WORKER_PORT": "18751",
                       "LIFECYCLE_MODEL_NAME": f"lineage-bench-{uuid.uuid4().hex[:6]}"})  # fmt: skip

    import httpx

    from lifecycle.settings import load_settings
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving
    from lifecycle.store import INFERENCE_LOG, Store
    from training.base_model import load_tokenizer, resolve_base_model
    from training.config import TrainConfig
    from training.evaluate import evaluate
    from training.ingest import ingest, record_lineage
    from training.launch import run_training
    from training.promote import promote

    s = load_settings()
    quiet = lambda m: None  # noqa: E731
    base = resolve_base_model(s.base_model, s.models_dir)
    tag = uuid.uuid4().hex[:6]
    rows = [json.loads(line) for line in (REPO / "data/toy/train.jsonl").read_text().splitlines()]
    lines = []
    for c in range(args.copies):
        for r in rows:
            r2 = json.loads(json.dumps(r))
            r2["messages"][0]["content"] += f" ({tag}-{c})"
            lines.append(json.dumps(r2))
    tmp = Path(tempfile.mkdtemp(prefix="lineage-bench-"))
    ds = ingest(lines, s.datasets_dir, name=f"lineage-bench-{tag}", eval_source=REPO / "data/toy/eval.jsonl",
                tokenizer=load_tokenizer(base, s.models_dir))  # fmt: skip
    with Store.connect(s) as store:
        record_lineage(store, ds, f"bench:{tag}")
        cfg = TrainConfig(base_model=base, dataset=str(ds.path), max_steps=1, checkpoint_every=0, micro_batch_size=8,
                          global_batch_size=8, out_dir=str(tmp / "run"))  # fmt: skip
        run = run_training(s, cfg, store=store, report=quiet)
        evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2, report=quiet)
        promote(s, store, run.mlflow_run_id, margin=-1.0, report=quiet)
        start_serving(s, 1, report=quiet)
        try:
            url = gateway_url(s)
            with httpx.Client(base_url=url, timeout=60) as client:
                ids = []
                for r in rows[: args.answers]:
                    q = r["messages"][0]["content"] + f" ({tag}-0)"
                    a = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q}],
                                                                  "max_tokens": 2})  # fmt: skip
                    a.raise_for_status()
                    ids.append(a.json()["id"])
                deadline = time.monotonic() + 60
                while store.db[INFERENCE_LOG].count_documents({"_id": {"$in": ids}}) < len(ids):
                    if time.monotonic() > deadline:
                        sys.exit("answers did not reach the inference log within 60 s")
                    time.sleep(0.2)
                t0 = time.perf_counter()
                first = client.get(f"/v1/responses/{ids[0]}/lineage")
                cold = time.perf_counter() - t0
                first.raise_for_status()
                top = first.json()["records"][0]
                exact = top["question"] == rows[0]["messages"][0]["content"] + f" ({tag}-0)"
                lookups, floor = [], []
                for i in range(args.lookups):
                    t0 = time.perf_counter()
                    client.get(f"/v1/responses/{ids[i % len(ids)]}/lineage").raise_for_status()
                    lookups.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    client.get("/healthz").raise_for_status()
                    floor.append(time.perf_counter() - t0)
        finally:
            stop_serving(s, report=quiet)

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000

    p50, base50 = statistics.median(lookups) * 1000, statistics.median(floor) * 1000
    print(f"index: {ds.train} training records ({args.copies} x toy), top match of the first answer is its own "
          f"record: {exact} (similarity {top['similarity']})")  # fmt: skip
    print(f"lineage lookup: cold {cold * 1000:.1f} ms; warm p50 {p50:.1f} ms, p95 {pct(lookups, 0.95):.1f} ms "
          f"({args.lookups} lookups)")  # fmt: skip
    print(f"baseline GET /healthz: p50 {base50:.1f} ms, p95 {pct(floor, 0.95):.1f} ms")
    print(f"ratio lineage p50 / healthz p50: {p50 / base50:.1f}x")


if __name__ == "__main__":
    main()
