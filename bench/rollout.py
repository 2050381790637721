"""Rollouts decided by live evidence, with scripted users, against the running local stack.

    .venv/bin/python bench/rollout.py [--users 200] [--concurrency 8] [--repeats 2] [--shadow-requests 400]
        [--shadow-only]

Builds three LoRA adapters of the base model (SmolLM2-135M) whose behaviour is known: each adds
``s * (a . h)`` to the logit of one junk token (a random direction ``a`` of the last hidden state), so
that on the prompts where ``a . h`` is large the answer derails into the junk word. ``s`` is calibrated
by bisection on the bench's prompt pool (greedy, in-process) to a target share of junk answers:
champion ~5 %, bad challenger ~30 %, good challenger 0 % (so "better" is measured by the users'
own judgement). Each is registered through a tracked MLflow run with its sha256 digests (a launcher
that writes the adapter stands in for the trainer), ``lifecycle serve`` starts, and scripted users
(a random user of ``--users`` and a random prompt per request, ``--concurrency`` at once) ask, judge
(junk word 3+ times = bad) and send ``POST /v1/feedback`` (-1 / +1).

Reported per scenario: requests until the rollout's decision, share of users who got a challenger
answer, failed requests. Then shadow's cost: p99 latency of user requests at concurrency 8 with no
rollout and with a (paused) shadow rollout mirroring ``LIFECYCLE_ROLLOUT_SHADOW_SHARE`` of them, in
alternating blocks of the same run, each shadow block measured once its rollout has settled (the
challenger loaded, the first decision look made, 16 requests of warm-up). After each shadow block
the bench waits until every mirrored request has been answered (the backlog a saturated worker left
for its idle time), so the next plain block does not pay for it; it reports how many mirrored
answers came back during the block itself.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import random
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

TOPICS = ["the ocean", "a dragon", "bread", "Rome", "photosynthesis", "the moon", "a robot", "coffee", "chess",
          "volcanoes", "a lighthouse", "honey bees", "trains", "winter", "the piano", "a desert", "glaciers",
          "a market", "owls", "the internet"]  # fmt: skip
FORMS = ["Tell me about {}.", "Write two sentences about {}.", "What is interesting about {}?",
         "Describe {} to a child."]  # fmt: skip
PROMPTS = [f.format(t) for t in TOPICS for f in FORMS]  # 80
MAX_TOKENS = 24


def build_adapter(base: str, folder: Path, junk: int, direction: Any, scale: float) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"]))
    head = pm.base_model.model.lm_head
    with torch.no_grad():
        head.lora_A["default"].weight.zero_()
        head.lora_A["default"].weight[0] = direction
        head.lora_B["default"].weight.zero_()
        head.lora_B["default"].weight[junk, 0] = scale
    pm.save_pretrained(str(folder), save_embedding_layers=False)  # the tied embedding is the base's


def junk_share(base: str, tok: Any, model: Any, junk: int, direction: Any, scale: float) -> float:
    """Share of the prompt pool answered with the junk word (greedy), for a given scale, in-process."""
    import torch

    bad = 0
    w = model.lm_head.weight
    with torch.no_grad():
        boost = torch.zeros_like(w)
        boost[junk] = scale * direction
        w += boost
        try:
            for i in range(0, len(PROMPTS), 16):
                batch = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False) for p in PROMPTS[i:i + 16]]  # fmt: skip
                x = tok(batch, return_tensors="pt", padding=True)
                out = model.generate(**x, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
                for row in out[:, x["input_ids"].shape[1] :]:
                    bad += is_bad(tok.decode(row, skip_special_tokens=True), tok.decode([junk]))
        finally:
            w -= boost
    return bad / len(PROMPTS)


def is_bad(text: str, junk_word: str) -> bool:
    return text.count(junk_word.strip()) >= 3


def calibrate(base: str, target: float, scale: float | None = None) -> tuple[int, Any, float, float]:
    """(junk token, direction, scale, measured share) with the share close to ``target`` (or at ``scale``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie: boost the head only
    junk = tok(" banana", add_special_tokens=False).input_ids[0]
    g = torch.Generator().manual_seed(7)
    direction = torch.randn(model.config.hidden_size, generator=g)
    direction /= direction.norm()
    if scale is not None:
        return junk, direction, scale, junk_share(base, tok, model, junk, direction, scale)
    lo, hi = 0.0, 8.0
    while junk_share(base, tok, model, junk, direction, hi) < target:
        lo, hi = hi, hi * 2
    share = 0.0
    for _ in range(7):
        mid = (lo + hi) / 2
        share = junk_share(base, tok, model, junk, direction, mid)
        if abs(share - target) <= 0.02:
            return junk, direction, mid, share
        lo, hi = (mid, hi) if share < target else (lo, mid)
    return junk, direction, mid, share


class Users:
    """Scripted users: ask, judge, rate. Records (t_sent, user, version, bad, status)."""

    def __init__(self, url: str, users: int, junk_word: str, seed: int) -> None:
        self.url, self.junk_word = url, junk_word
        self.users = [f"u{i}" for i in range(users)]
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[tuple[float, str, str, bool, int]] = []

    def one(self, client: Any) -> None:
        with self.lock:
            user, prompt = self.rng.choice(self.users), self.rng.choice(PROMPTS)
        t = time.monotonic()
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS, "temperature": 0,
                "user": user}  # fmt: skip
        try:
            r = client.post(self.url + "/v1/chat/completions", json=body, timeout=120)
        except Exception:  # noqa: BLE001 - a reset or timeout is a failed request
            self.log.append((t, user, "", False, -1))
            return
        if r.status_code != 200:
            self.log.append((t, user, "", False, r.status_code))
            return
        answer = r.json()
        bad = is_bad(answer["choices"][0]["message"]["content"], self.junk_word)
        client.post(self.url + "/v1/feedback", json={"response_id": answer["id"], "rating": -1 if bad else 1},
                    timeout=60)  # fmt: skip
        self.log.append((t, user, answer["model_version"], bad, 200))


def run_until(users: Users, concurrency: int, done: Any, limit: int) -> None:
    import httpx

    stop = threading.Event()

    def loop() -> None:
        with httpx.Client() as client:
            while not stop.is_set() and len(users.log) < limit:
                users.one(client)
                if done():
                    stop.set()

    with cf.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(loop) for _ in range(concurrency)]:
            f.result()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="rollouts of the bad adapter (fresh version each)")
    p.add_argument("--limit", type=int, default=3000, help="requests at most per scenario")
    p.add_argument("--shadow-requests", type=int, default=400, help="user requests per shadow share, half mirrored")
    p.add_argument("--shadow-shares", default="0.25,0.05", help="mirrored shares to price, comma-separated")
    p.add_argument("--shadow-only", action="store_true", help="only shadow's cost (no canary scenarios)")
    p.add_argument("--scales", default="", help="champion,bad junk scales (skip the calibration, e.g. 3.0,4.12)")
    args = p.parse_args()
    os.environ.update({"LIFECYCLE_GATEWAY_PORT": "18600", "LIFECYCLE_WORKER_PORT": "18651",
                       "LIFECYCLE_MODEL_NAME": f"rollout-bench-{uuid.uuid4().hex[:6]}"})  # fmt: skip

    from lifecycle import registry, rollout
    from lifecycle.settings import load_settings
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving
    from lifecycle.store import ROLLOUTS, Store
    from training.base_model import resolve_base_model
    from training.config import TrainConfig
    from training.launch import run_training

    s = load_settings()
    base = resolve_base_model(s.base_model, s.models_dir)
    tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    t0 = time.monotonic()
    plans = {}
    given = [float(x) for x in args.scales.split(",")] if args.scales else []
    for i, (label, target) in enumerate((("champion", 0.05), ("bad", 0.30))):
        junk, direction, scale, share = calibrate(base, target, given[i] if given else None)
        plans[label] = (scale, share)
        print(f"calibrated {label}: scale {scale:.2f} -> {share:.1%} junk answers on the pool ({len(PROMPTS)} prompts)")
    plans["good"] = plans["shadow"] = (0.0, 0.0)
    print(f"calibration {time.monotonic() - t0:.0f}s")
    from transformers import AutoTokenizer

    junk_word = AutoTokenizer.from_pretrained(base).decode([junk])

    mc = registry.client(s.mlflow_tracking_uri)
    versions: dict[str, list[int]] = {}
    canary = [] if args.shadow_only else ["bad"] * args.repeats + ["good"]
    shares = [float(x) for x in args.shadow_shares.split(",") if x]  # none: no shadow blocks
    order = ["champion", *canary, *["shadow"] * (2 * len(shares))]
    with Store.connect(s) as store:
        for i, label in enumerate(order):
            folder = tmp / f"{label}{i}"
            build_adapter(base, folder, junk, direction, plans[label][0])

            def launcher(cfg: Any, nproc: int, out_dir: Path, report: Any, folder: Path = folder) -> None:
                import shutil

                shutil.copytree(folder, out_dir / "adapter")
                (out_dir / "metrics.jsonl").write_text("")
                (out_dir / "result.json").write_text(json.dumps({"final_loss": 0, "tokens_per_sec": 0,
                                                                 "train_seconds": 0}))  # fmt: skip

            ds = tmp / "ds"
            ds.mkdir(exist_ok=True)
            (ds / "train.jsonl").write_text("")  # the adapter is built, not trained
            cfg = TrainConfig(base_model=base, dataset=str(ds), out_dir=str(tmp / f"run{i}"))
            run = run_training(s, cfg, store=store, report=lambda m: None, launcher=launcher)
            tags = {k: v for k, v in mc.get_run(run.mlflow_run_id).data.tags.items()
                    if k.startswith(registry.DIGEST_TAG_PREFIX)}  # fmt: skip
            mv, _ = registry.register(mc, s.model_name, run.model_uri, run.mlflow_run_id, tags)
            versions.setdefault(label, []).append(int(mv.version))
        champion = versions["champion"][0]
        mc.set_registered_model_alias(s.model_name, registry.CHAMPION, str(champion))
        print(f"registered {s.model_name}: {versions}")
        start_serving(s, s.worker_count(), report=lambda m: None)
        url = gateway_url(s)
        try:
            results = []
            for n, version in enumerate([*versions.get("bad", []), *versions.get("good", [])]):
                label = "good" if version in versions["good"] else "bad"
                doc = rollout.start(s, store, s.model_name, version, champion, "canary")
                rid = doc["_id"]
                users = Users(url, args.users, junk_word, seed=n)

                def finished(rid: str = rid) -> bool:
                    d = store.get(ROLLOUTS, rid)
                    return d is not None and d["state"] in rollout.DONE

                t1 = time.monotonic()
                run_until(users, args.concurrency, finished, args.limit)
                d = rollout.load(store, rid) or {}
                decided = d.get("decisions", [])[-1] if d.get("decisions") else {}
                exposed = {u for _, u, v, _, _ in users.log if v == str(version)}
                seen = {u for _, u, _, _, _ in users.log}
                failed = sum(code != 200 for *_, code in users.log)
                bad_c = [b for _, _, v, b, _ in users.log if v == str(version)]
                bad_b = [b for _, _, v, b, _ in users.log if v == str(champion)]
                results.append({"scenario": label, "version": version, "state": d.get("state"),
                                "requests": len(users.log), "users_exposed": len(exposed), "users_seen": len(seen),
                                "exposed_share": len(exposed) / max(1, len(seen)), "failed": failed,
                                "challenger_answers": len(bad_c), "challenger_bad": sum(bad_c) / max(1, len(bad_c)),
                                "champion_bad": sum(bad_b) / max(1, len(bad_b)), "reason": decided.get("reason", ""),
                                "seconds": round(time.monotonic() - t1, 1)})  # fmt: skip
                print(json.dumps(results[-1]))
            shadows = {}
            pool = list(versions["shadow"])
            for share in shares:
                picked = [pool.pop(0), pool.pop(0)]
                cfg = s.model_copy(update={"rollout_shadow_share": share})
                now_champion = registry.version_by_alias(mc, s.model_name, registry.CHAMPION)
                shadows[share] = shadow_cost(cfg, store, url, picked, int(now_champion.version), args)
                print(shadow_line(share, shadows[share]), flush=True)  # as it comes: a long run may be cut
        finally:
            stop_serving(s, report=lambda m: None)
    print(
        "\nscenario | version | decision | requests until it | users exposed | challenger bad | champion bad | failed"
    )
    for r in results:
        print(f"{r['scenario']} | v{r['version']} | {r['state']} | {r['requests']} | {r['users_exposed']}/"
              f"{r['users_seen']} ({r['exposed_share']:.1%}) | {r['challenger_bad']:.1%} of "
              f"{r['challenger_answers']} | {r['champion_bad']:.1%} | {r['failed']}")  # fmt: skip
    for share, sh in shadows.items():
        print(shadow_line(share, sh))


def shadow_line(share: float, sh: dict[str, Any]) -> str:
    return (f"shadow {share:.0%}: p99 {sh['p99_shadow']:.3f}s vs {sh['p99_plain']:.3f}s without -> "
            f"{sh['p99_shadow'] / sh['p99_plain']:.3f}x (two plain blocks differ by {sh['noise']:.3f}x); "
            f"p50 {sh['p50_shadow']:.3f} vs {sh['p50_plain']:.3f}; "
            f"mirrored {sh['sent']} of {2 * sh['per_block']} ({sh['skipped']} skipped: 8 already waiting), "
            f"{sh['in_block']} answered during the shadow blocks, {sh['answered']} in all")  # fmt: skip


def shadow_cost(s: Any, store: Any, url: str, shadows: list[int], champion: int, args: Any) -> dict[str, Any]:
    """p99 of user requests at concurrency 8: blocks with no rollout and blocks with a (paused) shadow
    rollout mirroring requests, alternating (plain, shadow, plain, shadow), one challenger per shadow block."""
    import httpx

    from lifecycle import rollout
    from lifecycle.store import INFERENCE_LOG, ROLLOUTS

    lat: dict[bool, list[float]] = {False: [], True: []}
    rng = random.Random(99)
    block = max(40, args.shadow_requests // (2 * len(shadows)))

    def one(client: httpx.Client) -> float:
        body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": MAX_TOKENS,
                "temperature": 0}  # fmt: skip
        t = time.monotonic()
        client.post(url + "/v1/chat/completions", json=body, timeout=120).raise_for_status()
        return time.monotonic() - t

    def measure(n: int) -> list[float]:
        with httpx.Client() as client, cf.ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: one(client), range(n)))

    def counted(outcome: str) -> int:
        text = httpx.get(url + "/metrics", timeout=10).text
        pattern = f'lifecycle_gateway_shadow_requests_total{{outcome="{outcome}"}} '
        return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith(pattern))

    measure(16)  # warm
    sent = skipped = answered = in_block = 0
    plain: list[list[float]] = []
    for version in shadows:
        plain.append(measure(block))
        lat[False] += plain[-1]
        doc = rollout.start(s, store, s.model_name, version, champion, "shadow", reason="bench: shadow cost")
        rollout.control(s, store, s.model_name, "pause", version)  # mirror, never step
        # Settled first: the challenger loaded on the worker and the first decision look made (one-off
        # costs of a rollout's start, not the cost of shadowing), then a warm-up not counted.
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "model": f"{s.model_name}@{version}"}
        httpx.post(url + "/v1/chat/completions", json=body, timeout=120).raise_for_status()
        t = time.monotonic()
        while "evidence" not in (store.get(ROLLOUTS, doc["_id"]) or {}) and time.monotonic() - t < 120:
            time.sleep(0.5)
        measure(16)
        before = counted("mirrored"), counted("skipped")
        lat[True] += measure(block)
        end = dt.datetime.now(dt.UTC)
        rollout.control(s, store, s.model_name, "abort", version)
        sent += counted("mirrored") - before[0]
        skipped += counted("skipped") - before[1]
        shadow = {"rollout": doc["_id"], "arm": "shadow"}
        t = time.monotonic()  # the backlog drains while idle; the next plain block must not pay for it
        while store.db[INFERENCE_LOG].count_documents(shadow) < sent - answered and time.monotonic() - t < 900:
            time.sleep(2)
        answered += store.db[INFERENCE_LOG].count_documents(shadow)
        in_block += store.db[INFERENCE_LOG].count_documents({**shadow, "created_at": {"$lte": end}})

    def q(xs: list[float], f: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * f))]

    noise = q(plain[1], 0.99) / q(plain[0], 0.99) if len(plain) > 1 else float("nan")  # plain vs plain
    return {"p99_plain": q(lat[False], 0.99), "p99_shadow": q(lat[True], 0.99), "noise": noise,
            "p50_plain": statistics.median(lat[False]), "p50_shadow": statistics.median(lat[True]),
            "sent": sent, "skipped": skipped, "answered": answered, "in_block": in_block,
            "per_block": block}  # fmt: skip


if __name__ == "__main__":
    main()
