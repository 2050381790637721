"""Hot swap under load: model events -> every worker serving the new version, with requests running.

    .venv/bin/python bench/hot_swap.py [--swaps 5] [--workers 2] [--concurrency 8] [--resident 1]

Against the running local stack (`lifecycle up`). Trains three 1-step LoRA adapters of the base model
(SmolLM2-135M by default) on the toy set, registers them through the real gate (v1 champion, then v2,
v3), starts `lifecycle serve` (gateway + workers) on ports 18500/18551+, runs a load generator, and
cycles the champion alias v1 -> v2 -> v3 -> v1 ... as promote and rollback do (under the alias lease,
``ModelPromoted`` for a higher version or ``ModelRolledBack`` for a lower one published on
``lifecycle.model-events``, then the alias moved: workers follow the alias). For each swap: event published ->
every worker reports the version over gRPC ``ModelStatus`` (polled every 20 ms). Baseline, same run:
the restart a deployment without hot swap needs (stop the workers, start them on the new version,
until ready). Prints failed requests (an HTTP error, a reset or a timeout), whether every request
started after a swap completed got the new version, swap p50/max, and the ratio. ``--resident 1``
(default) keeps one version per worker in memory, so every swap downloads, verifies and attaches
its adapter (the cold case: a worker holds the version it serves and the one it swaps to, so three
versions in a cycle are never in memory when asked for); a larger value measures swaps between
versions already in memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--resident", type=int, default=1, help="LIFECYCLE_RESIDENT_VERSIONS of the workers")
    args = p.parse_args()
    os.environ.update({"LIFECYCLE_GATEWAY_PORT": "18500", "LIFECYCLE_WORKER_PORT": "18551",
                       "LIFECYCLE_RESIDENT_VERSIONS": str(args.resident),
                       "LIFECYCLE_MODEL_NAME": f"swap-bench-{uuid.uuid4().hex[:6]}"})  # fmt: skip

    import httpx

    from lifecycle import champion, events, topics
    from lifecycle.settings import load_settings
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving
    from lifecycle.store import Store
    from lifecycle.v1 import events_pb2
    from training.base_model import load_tokenizer, resolve_base_model
    from training.config import TrainConfig
    from training.evaluate import evaluate
    from training.ingest import ingest
    from training.launch import run_training
    from training.promote import promote

    s = load_settings()
    quiet = lambda m: None  # noqa: E731
    base = resolve_base_model(s.base_model, s.models_dir)
    tmp = Path(tempfile.mkdtemp(prefix="swap-bench-"))
    ds = ingest(REPO / "data/toy/train.jsonl", tmp / "datasets", name="toy", eval_source=REPO / "data/toy/eval.jsonl",
                tokenizer=load_tokenizer(base, s.models_dir))  # fmt: skip
    with Store.connect(s) as store:
        runs = []
        for seed in (0, 1, 2):
            out = str(tmp / f"run{seed}")
            cfg = TrainConfig(base_model=base, dataset=str(ds.path), max_steps=1, checkpoint_every=0,
                              micro_batch_size=8, global_batch_size=8, out_dir=out, seed=seed)  # fmt: skip
            runs.append(run_training(s, cfg, store=store, report=quiet))
        for i, run in enumerate(runs):  # each evaluated against the champion it is promoted over
            evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2, report=quiet)
            promote(s, store, run.mlflow_run_id, margin=-1.0, report=quiet)
            if i == 0:
                start_serving(s, args.workers, report=quiet)

    url = gateway_url(s)

    import grpc

    from lifecycle.v1 import inference_pb2, inference_pb2_grpc

    stubs = [inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(f"{s.host}:{s.worker_port + i}"))
             for i in range(args.workers)]  # fmt: skip

    def versions() -> list[str]:
        return [stub.ModelStatus(inference_pb2.ModelStatusRequest(), timeout=5).version for stub in stubs]

    def wait_versions(v: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while versions() != [v] * args.workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not reach v{v}: {versions()}")
            time.sleep(0.02)

    wait_versions("3")
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=300) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(url + "/v1/generate", json={"prompt": "Tell me about Thandfusnu.", "max_tokens": 16})
                except httpx.HTTPError as exc:  # a reset or a timeout is a failed request
                    results.append((t0, -1, repr(exc)))
                    continue
                results.append((t0, r.status_code, r.json().get("version", "") if r.status_code == 200 else ""))

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    swaps: list[tuple[str, float, float]] = []  # (version, seconds, completed at)
    store = Store.connect(s)
    try:
        time.sleep(3)  # load running before the first swap
        for i in range(args.swaps):
            was, now = (i + 2) % 3 + 1, i % 3 + 1  # 3 -> 1 -> 2 -> 3 -> 1 ...
            target = str(now)
            if now > was:
                event = events.new_event(events_pb2.ModelPromoted, model_name=s.model_name, version=now,
                                         alias="champion")  # fmt: skip
            else:
                event = events.new_event(events_pb2.ModelRolledBack, model_name=s.model_name, version=now,
                                         alias="champion", from_version=was)  # fmt: skip
            t0 = time.monotonic()
            # as promote/rollback do: under the alias lease, publish, then move the alias the workers follow
            champion.move(s, store, s.model_name, now, expected=was,
                          before=lambda e=event: events.publish(s, topics.MODEL_EVENTS, s.model_name, e))  # fmt: skip
            wait_versions(target)
            swaps.append((target, time.monotonic() - t0, time.monotonic()))
            time.sleep(3)  # requests on the new version before the next swap
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.close()
    failed = [r for r in results if r[1] != 200]
    wrong = 0
    for k, (target, _, done_at) in enumerate(swaps):
        until = swaps[k + 1][2] - swaps[k + 1][1] if k + 1 < len(swaps) else float("inf")
        wrong += sum(1 for t0, code, v in results if done_at < t0 < until and code == 200 and v != target)

    stop_serving(s, report=quiet)  # baseline: a restart onto the champion (v3 by alias)
    t0 = time.monotonic()
    start_serving(s, args.workers, report=quiet)
    restart = time.monotonic() - t0
    stop_serving(s, report=quiet)

    times = [x[1] for x in swaps]
    print(f"{args.workers} workers, {args.concurrency} clients, {len(results)} requests during {len(swaps)} swaps; "
          f"{args.resident} version(s) resident per worker")  # fmt: skip
    print(f"failed requests: {len(failed)}; requests started after a swap that got the old version: {wrong}")
    print("swap seconds (event published -> all workers serving): " + ", ".join(f"{x:.2f}" for x in times))
    print(f"swap p50 {statistics.median(times):.2f} s, max {max(times):.2f} s")
    print(f"baseline restart of the workers onto the new version: {restart:.2f} s (every request fails meanwhile)")
    print(f"ratio restart / swap p50 = {restart / statistics.median(times):.2f}x")


if __name__ == "__main__":
    main()
