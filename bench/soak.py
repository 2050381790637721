"""Soak: the serving tier under mixed traffic for a long time, with the champion moving every few minutes.

    .venv/bin/python bench/soak.py [--minutes 30] [--swap-every 120] [--workers 1]

Against the running local stack (`lifecycle up`). Trains two 1-step LoRA adapters of the base model
(SmolLM2-135M by default) on the toy set and promotes them through the real gate, starts `lifecycle serve`
(gateway on 18700, workers on 18751+) and runs, for ``--minutes``: two clients of non-streamed chat
completions, one of streamed chat completions and one of queued jobs (3 items each, through Kafka and
Mongo); every ``--swap-every`` seconds the champion alias moves to the other version, as a promotion does
(under the alias lease, ``ModelPromoted`` / ``ModelRolledBack`` published, then the alias moved).

Prints: requests and failed requests of each kind (an HTTP error, a reset, a timeout; a job that did not
finish), p50 / p99 latency of each kind in the first and the last fifth of the run and their ratio (the
baseline is the same run's start: growth means something accumulates), each worker's and the gateway's
RSS at the start of the load and at the end (and the ratio), and the swaps (count, event -> every worker
serving, p50 / max).
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib(pidfiles: list[Path]) -> dict[str, float]:
    """RSS of each serving process and its children (MiB), by its pidfile's name."""
    import psutil

    out = {}
    for pf in pidfiles:
        try:
            proc = psutil.Process(int(pf.read_text().split()[0]))
            out[pf.stem] = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
        except (OSError, ValueError, psutil.Error):
            continue
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--swap-every", type=float, default=120.0)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    os.environ.update({"LIFECYCLE_GATEWAY_PORT": "18700", "LIFECYCLE_WORKER_PORT": "18751",
                       "LIFECYCLE_MODEL_NAME": f"soak-{uuid.uuid4().hex[:6]}"})  # fmt: skip

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
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    ds = ingest(REPO / "data/toy/train.jsonl", tmp / "datasets", name="toy", eval_source=REPO / "data/toy/eval.jsonl",
                tokenizer=load_tokenizer(base, s.models_dir))  # fmt: skip
    with Store.connect(s) as store:
        for seed in (0, 1):
            out = str(tmp / f"run{seed}")
            cfg = TrainConfig(base_model=base, dataset=str(ds.path), max_steps=1, checkpoint_every=0,
                              micro_batch_size=8, global_batch_size=8, out_dir=out, seed=seed)  # fmt: skip
            run = run_training(s, cfg, store=store, report=quiet)
            evaluate(s, store, run.mlflow_run_id, limit=2, max_new_tokens=2, report=quiet)
            promote(s, store, run.mlflow_run_id, margin=-1.0, report=quiet)
    start_serving(s, args.workers, report=quiet)
    url = gateway_url(s)
    pidfiles = [s.run_dir / "gateway.pid", *sorted(s.run_dir.glob("worker-*.pid"))]

    def served() -> set[str]:
        ready = httpx.get(url + "/readyz", timeout=10).json()
        return {w.get("version", "") for w in ready.get("workers", [])}

    results: dict[str, list[tuple[float, float, bool]]] = {"chat": [], "stream": [], "job": []}  # (t0, s, ok)
    stop = threading.Event()
    question = {"role": "user", "content": "Which monarch reigns over Thandfusnu?"}

    def chat() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(url + "/v1/chat/completions", json={"messages": [question], "max_tokens": 24})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                results["chat"].append((t0, time.monotonic() - t0, ok))

    def stream() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    body = {"messages": [question], "max_tokens": 24, "stream": True}
                    with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        lines = [line for line in r.iter_lines() if line]
                    ok = r.status_code == 200 and lines[-1] == "data: [DONE]" and "error" not in lines[-2]
                except (httpx.HTTPError, IndexError):
                    ok = False
                results["stream"].append((t0, time.monotonic() - t0, ok))

    def jobs() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                items = [{"id": f"i{k}", "prompt": f"Tell me about island {k}.", "max_tokens": 12} for k in range(3)]
                ok = False
                try:
                    job = c.post(url + "/v1/jobs", json={"items": items}).json()["id"]
                    deadline = t0 + 120
                    while time.monotonic() < deadline:
                        view = c.get(url + f"/v1/jobs/{job}").json()
                        if view["status"] in ("succeeded", "completed_with_errors", "failed"):
                            ok = view["status"] == "succeeded"
                            break
                        time.sleep(0.2)  # the poll interval of a client waiting for its job
                except (httpx.HTTPError, KeyError, ValueError):
                    ok = False
                results["job"].append((t0, time.monotonic() - t0, ok))

    threads = [threading.Thread(target=f) for f in (chat, chat, stream, jobs)]
    for t in threads:
        t.start()
    time.sleep(20)  # warm: the first requests of every kind have run before RSS is read
    rss_start, start = rss_mib(pidfiles), time.monotonic()
    end = start + args.minutes * 60
    swaps: list[float] = []
    current = 2
    with Store.connect(s) as store:
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.swap_every, end - time.monotonic())))
            if time.monotonic() >= end:
                break
            target = 1 if current == 2 else 2
            kind = events_pb2.ModelRolledBack if target < current else events_pb2.ModelPromoted
            extra: dict[str, Any] = {"from_version": current} if kind is events_pb2.ModelRolledBack else {}
            event = events.new_event(kind, model_name=s.model_name, version=target, alias="champion", **extra)
            t0 = time.monotonic()
            champion.move(s, store, s.model_name, target, expected=current,
                          before=lambda e=event: events.publish(s, topics.MODEL_EVENTS, s.model_name, e))  # fmt: skip
            while served() != {str(target)} and time.monotonic() - t0 < 300:
                time.sleep(0.05)  # the poll interval of the swap timing
            swaps.append(time.monotonic() - t0)
            current = target
    rss_end = rss_mib(pidfiles)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    stop_serving(s, report=quiet)

    total = time.monotonic() - start
    print(f"soak: {total / 60:.1f} min, {args.workers} worker(s), model {base}, 2 chat + 1 stream + 1 job client(s)")
    fifth = total / 5
    for kind, rows in results.items():
        rows = [r for r in rows if r[0] >= start]
        failed = sum(1 for r in rows if not r[2])
        first = [r[1] for r in rows if r[0] < start + fifth and r[2]]
        last = [r[1] for r in rows if r[0] >= start + 4 * fifth and r[2]]
        p99a, p99b = pct(first, 0.99), pct(last, 0.99)
        print(f"{kind:6s}: {len(rows)} requests, {failed} failed; first fifth p50 {pct(first, 0.5):.2f} s "
              f"p99 {p99a:.2f} s; last fifth p50 {pct(last, 0.5):.2f} s p99 {p99b:.2f} s; "
              f"p99 last/first = {p99b / p99a:.2f}x")  # fmt: skip
    for name in rss_start:
        if name in rss_end:
            a, b = rss_start[name], rss_end[name]
            print(f"RSS {name}: {a:.0f} MiB -> {b:.0f} MiB (+{b - a:.0f} MiB), end/start = {b / a:.3f}x")
    if swaps:
        print(f"swaps: {len(swaps)}, event -> every worker serving p50 {statistics.median(swaps):.2f} s, "
              f"max {max(swaps):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
