"""Serving throughput: our gateway + gRPC workers as `lifecycle serve` starts them, beside a naive
FastAPI server and in-process peers, on the same model, prompts and token counts, in one run.

    .venv/bin/python bench/serve_throughput.py [--model DIR] [--levels 1,8,32] [--requests 32]
        [--max-tokens 32] [--workers 0] [--threads 0] [--dtype auto] [--no-peers]

* **ours**: gateway + workers started as `lifecycle serve` does (``--workers 0``: its default for this
  machine, threads split between workers), read as SSE streams (/v1/chat/completions), so time to
  first token is the first chunk.
* **naive**: FastAPI + one HF ``generate`` per request, serialised (one at a time, as a naive server
  runs), same dtype as ours; not streamed, so its TTFT is its latency. Its runs are interleaved with
  ours level by level.
* **peers**, in this process after the servers stop, same dtype, EOS ignored: at the highest level,
  HF ``generate`` on a static batch of the same prompts (also run before the servers start: the
  better of its two runs counts) and transformers' continuous batching
  (``generate_batch``), and the static batch again in the dtype ``from_pretrained`` gives by default;
  at concurrency 1, HF ``generate`` on one prompt, and llama.cpp
  (``llama-cpp-python``, a bench-only extra: ``pip install llama-cpp-python``, built from source) on
  the GGUF file the default base model comes from, its prompts one after another (its Python API runs
  one sequence at a time; it reads the file's Q4_1 weights, where we run the same weights
  dequantised).

At the highest level, ``--pairs`` more runs of ours alternate with the static batch (in this process, the
servers idle meanwhile; static first in even pairs, ours first in odd ones): the ratio of each pair,
taken within seconds, is what a drift of the machine's speed leaves alone.

Greedy, ``max_tokens`` per request. Prints tokens/s, p50/p99 latency and TTFT per level, and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "Explain why the sky is blue.",
    "List three uses of a paperclip.",
    "Describe the taste of an orange.",
    "What makes a good friend?",
    "Write a limerick about a cat.",
    "How do bicycles stay upright?",
    "Give advice to a new gardener.",
]

BASELINE = """
import asyncio, concurrent.futures, sys, torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[3]))
# Loaded and run one request at a time on one thread: GNU OpenMP parks the workers of a thread's team
# when other threads' idle teams outnumber the cores, which would slow a thread-pool route down.
one_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = one_thread.submit(lambda: AutoModelForCausalLM.from_pretrained(
    sys.argv[1], dtype=getattr(torch, sys.argv[4])).eval()).result()
app = FastAPI()

class Req(BaseModel):
    prompt: str
    max_tokens: int = 32

def generate(req):
    text = tok.apply_chat_template([{"role": "user", "content": req.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=req.max_tokens, do_sample=False)
    n = out.shape[1] - enc["input_ids"].shape[1]
    return {"choices": [{"text": tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)}],
            "usage": {"completion_tokens": n}}

@app.post("/v1/completions")
async def complete(req: Req):
    return await asyncio.get_running_loop().run_in_executor(one_thread, generate, req)

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


async def _one(client, url: str, prompt: str, max_tokens: int, stream: bool) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    if not stream:
        r = await client.post(url, json={"prompt": prompt, "max_tokens": max_tokens})
        r.raise_for_status()
        dt = time.perf_counter() - t0
        return dt, dt, int(r.json()["usage"]["completion_tokens"])
    ttft, tokens = None, 0
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return time.perf_counter() - t0, ttft or 0.0, tokens


async def load(url: str, concurrency: int, requests: int, max_tokens: int, stream: bool) -> dict[str, float]:
    import httpx

    # This process holds torch's and transformers' objects (~200k): a full collection of them in the middle of a
    # run (~100 ms here) is a pause of the client, not of the server. Frozen, a collection skips them.
    gc.collect()
    gc.freeze()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def task(i: int) -> tuple[float, float, int]:
            async with sem:
                return await _one(client, url, PROMPTS[i % len(PROMPTS)], max_tokens, stream)

        t0 = time.perf_counter()
        res = await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in res)
    ttft = sorted(r[1] for r in res)

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]

    return {
        "tok_s": sum(r[2] for r in res) / wall,
        "p50": statistics.median(lat),
        "p99": pct(lat, 0.99),
        "ttft50": statistics.median(ttft),
        "ttft99": pct(ttft, 0.99),
    }


ENGINE = ("prefill_passes", "prefill_seconds", "prefill_tokens", "decode_passes", "decode_rows", "decode_seconds")


def engine_totals(gateway: str) -> dict[str, float]:
    """The workers' engine totals (summed) from the gateway's /metrics."""
    import httpx

    out = dict.fromkeys(ENGINE, 0.0)
    for line in httpx.get(gateway + "/metrics", timeout=30).text.splitlines():
        for k in ENGINE:
            if line.startswith(f"lifecycle_worker_{k}_total{{"):
                out[k] += float(line.rsplit(" ", 1)[1])
    return out


def engine_line(before: dict[str, float], after: dict[str, float]) -> str:
    d = {k: after[k] - before[k] for k in ENGINE}
    pp, dp = max(d["prefill_passes"], 1), max(d["decode_passes"], 1)
    return (f"{d['prefill_passes']:.0f} prefill passes ({d['prefill_tokens'] / pp:.0f} tokens, "
            f"{1000 * d['prefill_seconds'] / pp:.0f} ms each), {d['decode_passes']:.0f} decode passes "
            f"({d['decode_rows'] / dp:.1f} rows, {1000 * d['decode_seconds'] / dp:.1f} ms each)")  # fmt: skip


def wait_http(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def hf_model(model: str, dtype: str) -> tuple[object, object]:
    """The HF model and tokenizer the static batch runs on, warmed up."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO / "bench"))
    from engine_throughput import hf_static

    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    hf_static(hf, tok, convs(2), 2, "cpu")  # warm-up
    return hf, tok


def static_batch(hf: object, tok: object, n: int, max_tokens: int) -> float:
    """tokens/s of HF ``generate`` on a static batch of ``n`` prompts (run before the servers, beside ours
    at the top level and after: this machine's speed drifts by tens of percent over minutes)."""
    from engine_throughput import hf_static

    return hf_static(hf, tok, convs(n), max_tokens, "cpu")


def peers(model: str, dtype: str, levels: list[int], requests: int, max_tokens: int) -> dict[str, dict[int, float]]:
    """tokens/s of the in-process peers at each level: {peer: {level: tokens/s}}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO / "bench"))
    from engine_throughput import hf_generate_batch, hf_static

    tok = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    top, n = max(levels), max(requests, max(levels))
    hf_static(hf, tok, convs(2), 2, "cpu")  # warm-up
    out: dict[str, dict[int, float]] = {
        "HF generate, one prompt at a time": {1: hf_static(hf, tok, convs(1), max_tokens, "cpu")},
        "llama.cpp, one prompt at a time": {1: llama_cpp(requests, max_tokens)},
        "HF static batch of the same prompts": {top: hf_static(hf, tok, convs(n), max_tokens, "cpu")},
        "HF generate_batch (continuous batching)": {
            top: hf_generate_batch(hf, tok, convs(n), max_tokens, "cpu") or float("nan")
        },
    }
    if dtype != "float32":  # what `from_pretrained` gives without a dtype: this checkpoint's float32
        del hf
        hf32 = AutoModelForCausalLM.from_pretrained(model).eval()
        hf_static(hf32, tok, convs(2), 2, "cpu")
        out[f"HF static batch, {hf32.dtype} (from_pretrained's default)".replace("torch.", "")] = {
            top: hf_static(hf32, tok, convs(n), max_tokens, "cpu")
        }
    return out


def convs(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(n)]


def llama_cpp(requests: int, max_tokens: int) -> float:
    """tokens/s of llama.cpp on the default base model's GGUF file, prompts one after another; NaN when
    llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: not installed (pip install llama-cpp-python); skipped")
        return float("nan")
    from training.base_model import gguf_path

    llm = Llama(model_path=str(gguf_path(report=lambda m: None)), n_ctx=2048, n_threads=os.cpu_count() or 2,
                verbose=False)  # fmt: skip
    llm.create_chat_completion(convs(1)[0], max_tokens=2, temperature=0)  # warm-up
    t0, made = time.perf_counter(), 0
    for conv in convs(requests):
        r = llm.create_chat_completion(conv, max_tokens=max_tokens, temperature=0)
        made += r["usage"]["completion_tokens"]
    return made / (time.perf_counter() - t0)


def main() -> None:
    from lifecycle.settings import load_settings
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving
    from runtime.hardware import choose

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="0: as `lifecycle serve` on this machine")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker; 0: as `lifecycle serve`")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--pairs", type=int, default=4, help="top level: runs of ours alternating with the static batch")
    args = p.parse_args()
    if not args.model:
        from training.base_model import default_model_dir

        args.model = default_model_dir()
    model = args.model
    dtype = choose(args.dtype, "cpu").dtype
    home = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    os.environ.update({"LIFECYCLE_HOME": str(home), "LIFECYCLE_GATEWAY_PORT": "18200", "LIFECYCLE_WORKER_PORT": "18251",
                       "LIFECYCLE_DTYPE": dtype})  # fmt: skip
    s = load_settings()
    workers = args.workers or s.worker_count()
    cores = os.cpu_count() or 2
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "naive": {}}
    engine: dict[int, str] = {}
    script = home / "naive.py"
    script.write_text(BASELINE)
    top = max(levels)
    hf = None if args.no_peers else hf_model(model, dtype)
    static_before = None if hf is None else static_batch(*hf, max(args.requests, top), args.max_tokens)
    pairs: list[tuple[float, float]] = []
    naive_proc = subprocess.Popen([sys.executable, str(script), model, "18300", str(cores), dtype])
    start_serving(s, workers, model, threads=args.threads, events=False, report=lambda m: None)
    try:
        wait_http("http://127.0.0.1:18300/docs")
        ours, naive = gateway_url(s) + "/v1/chat/completions", "http://127.0.0.1:18300/v1/completions"
        asyncio.run(load(ours, 2, 2, 4, True))  # warm-up
        asyncio.run(load(naive, 2, 2, 4, False))
        for c in levels:  # interleaved: the idle server takes no CPU while the other runs
            n = max(args.requests, c)
            before = engine_totals(gateway_url(s))
            results["ours"][c] = asyncio.run(load(ours, c, n, args.max_tokens, True))
            engine[c] = engine_line(before, engine_totals(gateway_url(s)))
            results["naive"][c] = asyncio.run(load(naive, c, n, args.max_tokens, False))
        n = max(args.requests, top)
        for i in range(args.pairs if hf is not None else 0):  # the servers idle while the static batch runs
            run = {"static": lambda: static_batch(*hf, n, args.max_tokens),
                    "ours": lambda: asyncio.run(load(ours, top, n, args.max_tokens, True))["tok_s"]}  # fmt: skip
            # in turn which goes first (static, ours; ours, static; ...): what one run leaves the next falls on both
            got = {name: run[name]() for name in (("ours", "static") if i % 2 else ("static", "ours"))}
            pairs.append((got["static"], got["ours"]))
    finally:
        stop_serving(s, report=lambda m: None)
        naive_proc.terminate()
        naive_proc.wait()
    others = {} if args.no_peers else peers(model, dtype, levels, args.requests, args.max_tokens)
    if static_before is not None:
        after = others.pop("HF static batch of the same prompts")[top]
        print(f"HF static batch: {static_before:.1f} tokens/s before the servers, {after:.1f} after; the best counts")
        others["HF static batch of the same prompts (best of 2)"] = {top: max(static_before, after)}
    threads = args.threads or max(1, cores // workers)
    print(f"model {model} in {dtype}, max_tokens {args.max_tokens}, greedy, {args.requests} requests per level; "
          f"ours: {workers} worker(s) x {threads} threads; naive: serialised, {cores} threads")  # fmt: skip
    print("| concurrency | server | tokens/s | p50 s | p99 s | TTFT p50 s | TTFT p99 s |")
    print("|---|---|---|---|---|---|---|")
    for c in levels:
        for name in ("ours", "naive"):
            r = results[name][c]
            print(f"| {c} | {name} | {r['tok_s']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['ttft50']:.2f} | "
                  f"{r['ttft99']:.2f} |")  # fmt: skip
        for peer, by_level in others.items():
            if c in by_level:
                print(f"| {c} | {peer} | {by_level[c]:.1f} | | | | |")
    for c in levels:
        print(f"c={c}: our workers ran {engine[c]}")
    if pairs:
        runs = ", ".join(f"{a:.1f} / {b:.1f}" for a, b in pairs)
        per_pair = sorted(b / a for a, b in pairs)
        best = max(b for _, b in pairs) / max(a for a, _ in pairs)
        print(f"c={top}, ours alternating with the static batch (static / ours tokens/s): {runs}; ours / static "
              f"per pair: {', '.join(f'{r:.2f}x' for r in per_pair)} (median {statistics.median(per_pair):.2f}x); "
              f"best / best {best:.2f}x")  # fmt: skip
    for c in levels:
        mine = results["ours"][c]["tok_s"]
        ratios = [f"naive {mine / results['naive'][c]['tok_s']:.2f}x"]
        ratios += [f"{peer} {mine / v[c]:.2f}x" for peer, v in others.items() if c in v and v[c] == v[c]]
        print(f"c={c}: ours / " + ", ours / ".join(ratios))


if __name__ == "__main__":
    main()
