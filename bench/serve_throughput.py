"""Serving throughput: our gateway + gRPC workers (continuous batching) vs a naive FastAPI app that
calls Hugging Face ``generate`` per request, measured in the same run on the same model.

    .venv/bin/python bench/serve_throughput.py [--model DIR] [--levels 1,8,32] [--requests 32] [--max-tokens 32]

Both servers are started here as processes (no Kafka needed: workers run with --no-events) and get
the same fixed prompts, greedy, fixed ``max_tokens``, at each concurrency. Ours is read as an SSE
stream (/v1/completions, stream: true), so time to first token is the first chunk; the baseline
does not stream, so its TTFT is its latency. Prints tokens/s, p50/p99 latency and TTFT, and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
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
import sys, torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[3]))
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
app = FastAPI()

class Req(BaseModel):
    prompt: str
    max_tokens: int = 32

@app.post("/v1/completions")
def complete(req: Req):
    text = tok.apply_chat_template([{"role": "user", "content": req.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=req.max_tokens, do_sample=False)
    n = out.shape[1] - enc["input_ids"].shape[1]
    return {"choices": [{"text": tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)}],
            "usage": {"completion_tokens": n}}

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


def main() -> None:
    from lifecycle.settings import load_settings
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    base = load_settings()
    model = args.model or str(base.models_dir / base.base_model.replace("/", "--"))
    home = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    os.environ.update(
        {"LIFECYCLE_HOME": str(home), "LIFECYCLE_GATEWAY_PORT": "18200", "LIFECYCLE_WORKER_PORT": "18251"}
    )
    s = load_settings()
    levels = [int(x) for x in args.levels.split(",")]
    results: dict[str, dict[int, dict[str, float]]] = {"ours": {}, "naive": {}}
    start_serving(
        s, args.workers, model, threads=max(1, args.threads // args.workers), events=False, report=lambda m: None
    )
    try:
        ours = gateway_url(s) + "/v1/chat/completions"
        asyncio.run(load(ours, 2, 2, 4, True))  # warm-up
        for c in levels:
            results["ours"][c] = asyncio.run(load(ours, c, max(args.requests, c), args.max_tokens, True))
    finally:
        stop_serving(s, report=lambda m: None)
    script = home / "naive.py"
    script.write_text(BASELINE)
    proc = subprocess.Popen([sys.executable, str(script), model, "18300", str(args.threads)])
    try:
        wait_http("http://127.0.0.1:18300/docs")
        naive = "http://127.0.0.1:18300/v1/completions"
        asyncio.run(load(naive, 2, 2, 4, False))
        for c in levels:
            results["naive"][c] = asyncio.run(load(naive, c, max(args.requests, c), args.max_tokens, False))
    finally:
        proc.terminate()
        proc.wait()
    print(f"model {model}, max_tokens {args.max_tokens}, greedy, {args.workers} worker(s) x {args.threads} threads")
    print(f"{'conc':>4} {'server':>6} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'TTFT50':>7} {'TTFT99':>7}")
    for c in levels:
        for name in ("ours", "naive"):
            r = results[name][c]
            print(
                f"{c:>4} {name:>6} {r['tok_s']:8.1f} {r['p50']:7.2f} {r['p99']:7.2f} {r['ttft50']:7.2f} "
                f"{r['ttft99']:7.2f}"
            )
        ratio = results["ours"][c]["tok_s"] / results["naive"][c]["tok_s"]
        print(f"{c:>4}  ratio tokens/s ours/naive = {ratio:.2f}x")


if __name__ == "__main__":
    main()
