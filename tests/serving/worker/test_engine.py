"""The continuous-batching engine on the tiny Llama and SmolLM2: same tokens as Hugging Face greedy
generation whatever joins or leaves the batch, stop strings, limits, cancellation, hot swap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from serving.worker.engine import Delta, Engine, EngineError, ModelSlot, QueueFullError, SamplingParams
from training.generation import load_model

QUESTIONS = ["What is the capital of France?", "hi", "Write a haiku about the sea, please, in English.", "2+2?"]


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> tuple[Any, Any]:
    return load_model(str(smollm2_dir))


def collect(engine: Engine, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"text": "", "deltas": []}

    def sink(d: Delta) -> None:
        out["text"] += d.text
        out["deltas"].append(d)
        if d.finish_reason:
            out["done"] = d

    out["req"] = engine.submit(sink=sink, **kw)
    return out


def run(engine: Engine) -> None:
    while engine.queued() or engine.running():
        engine.step()


def hf_greedy(model: Any, tok: Any, question: str, n: int) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    gen = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return str(tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def test_requests_joining_at_different_steps_get_the_tokens_of_single_greedy_generation(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=8)
    eng.swap(ModelSlot("m", "1", model, tok))
    results = []
    for q in QUESTIONS:  # each joins a batch that is already decoding
        results.append(collect(eng, messages=[{"role": "user", "content": q}], params=SamplingParams(max_tokens=20)))
        eng.step()
        eng.step()
    run(eng)
    assert eng.prefix_tokens >= 16 * 3  # the chat template's system prompt: prefilled once, then copied
    for q, r in zip(QUESTIONS, results, strict=True):
        assert r["text"] == hf_greedy(model, tok, q, 20), q
        assert r["done"].finish_reason in ("stop", "length")
        assert r["done"].completion_tokens <= 20


def test_a_request_arriving_during_a_prefill_joins_before_the_decode_step(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=8)
    eng.swap(ModelSlot("m", "1", model, tok))
    ask = [{"role": "user", "content": QUESTIONS[0]}], [{"role": "user", "content": QUESTIONS[2]}]
    first, later = collect(eng, messages=ask[0], params=SamplingParams(max_tokens=8)), []
    prefill = eng._prefill

    def arriving(*args: Any) -> None:  # the gRPC loop submits a request while the engine prefills the first
        if not later:
            later.append(collect(eng, messages=ask[1], params=SamplingParams(max_tokens=8)))
        prefill(*args)

    eng._prefill = arriving  # type: ignore[method-assign]
    eng.step()
    # one step: both prefilled, then one decode pass for both (not a pass for the first alone)
    assert eng.totals["prefill_passes"] == 2 and eng.totals["decode_passes"] == 1
    assert len(first["req"].out_ids) == len(later[0]["req"].out_ids) == 2
    run(eng)
    assert first["text"] == hf_greedy(model, tok, QUESTIONS[0], 8)
    assert later[0]["text"] == hf_greedy(model, tok, QUESTIONS[2], 8)


def test_prompts_admitted_together_prefill_their_shared_system_prompt_once(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=8)
    eng.swap(ModelSlot("m", "1", model, tok))
    results = [collect(eng, messages=[{"role": "user", "content": q}], params=SamplingParams(max_tokens=12))
               for q in QUESTIONS]  # fmt: skip
    prompts = sum(len(r["req"].prompt_ids) for r in results)
    run(eng)
    # the chat template's system prompt (over 20 tokens) is prefilled for the first only; the others
    # copy its keys and values: fewer tokens prefilled, the same greedy tokens
    assert eng.totals["prefill_tokens"] <= prompts - 3 * 20
    assert eng.prefix_tokens >= 3 * 20
    for q, r in zip(QUESTIONS, results, strict=True):
        assert r["text"] == hf_greedy(model, tok, q, 12), q


def test_limits_stop_strings_and_validation(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=4, max_queue=2, max_tokens_limit=100)
    eng.swap(ModelSlot("m", "1", model, tok, context_length=64))
    full = collect(
        eng,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        params=SamplingParams(max_tokens=5),
    )
    run(eng)
    assert full["done"].finish_reason == "length" and full["done"].completion_tokens == 5
    stopped = collect(
        eng,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        params=SamplingParams(max_tokens=20, stop=[" of"]),
    )
    run(eng)
    assert stopped["text"] == "The capital" and stopped["done"].finish_reason == "stop"
    with pytest.raises(EngineError, match="prompt is empty"):
        eng.submit(prompt="")
    with pytest.raises(EngineError, match="context is 64"):
        eng.submit(prompt="word " * 200)
    for bad in (0, 101):
        with pytest.raises(EngineError, match="max_tokens must be between 1 and 100"):
            eng.submit(prompt="hi", params=SamplingParams(max_tokens=bad))
    eng.submit(prompt="a")
    eng.submit(prompt="b")
    with pytest.raises(QueueFullError):
        eng.submit(prompt="c")


def test_a_cancelled_request_leaves_the_batch_at_the_next_step(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=4)
    eng.swap(ModelSlot("m", "1", model, tok))
    a = collect(eng, prompt="Once upon a time", params=SamplingParams(max_tokens=50))
    b = collect(eng, prompt="The weather today", params=SamplingParams(max_tokens=50))
    eng.step()
    assert eng.running() == 2
    eng.cancel(a["req"])
    sent = len(a["deltas"])
    eng.step()
    assert eng.running() == 1 and len(a["deltas"]) == sent
    run(eng)
    assert b["done"].completion_tokens == 50


def chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def test_background_requests_wait_for_spare_capacity_outside_user_passes(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=4, background_share=0.0)  # no engine time for background work beside users
    eng.swap(ModelSlot("m", "1", model, tok))
    passes: list[tuple[bool, set[int]]] = []
    forward = eng._forward

    def spy(group: Any, ids: Any, pos: Any, ctx: Any, *args: Any, **kw: Any) -> Any:
        passes.append((ctx.prefill, set(ctx.rows.tolist())))
        return forward(group, ids, pos, ctx, *args, **kw)

    eng._forward = spy  # type: ignore[method-assign]
    user = collect(eng, messages=chat(QUESTIONS[0]), params=SamplingParams(max_tokens=12))
    shadow = collect(eng, messages=chat(QUESTIONS[2]), params=SamplingParams(max_tokens=16), background=True)
    for _ in range(5):
        eng.step()
    assert shadow["deltas"] == [] and eng.background_passes == 0
    assert passes and all(rows == {0} for _, rows in passes)  # the user's row alone, in every pass
    run(eng)  # the user finishes first; then the background request runs freely, in the top row
    assert user["done"].completion_tokens <= 12 and user["text"] == hf_greedy(model, tok, QUESTIONS[0], 12)
    assert shadow["text"] == hf_greedy(model, tok, QUESTIONS[2], 16)
    assert {3} in [rows for prefill, rows in passes if not prefill] and eng.background_passes > 0

    eng.background_share = 0.5  # now half the engine's time: it advances beside a user, in passes of its own
    passes.clear()
    user = collect(eng, messages=chat(QUESTIONS[1]), params=SamplingParams(max_tokens=20))
    shadow = collect(eng, messages=chat(QUESTIONS[3]), params=SamplingParams(max_tokens=20), background=True)
    for _ in range(8):
        eng.step()
    assert shadow["deltas"] and "done" not in user
    assert all(rows == {0} or rows == {3} for _, rows in passes)
    run(eng)
    assert shadow["text"] == hf_greedy(model, tok, QUESTIONS[3], 20)


def test_a_user_request_takes_a_background_row_and_the_background_request_resumes_where_it_was(smol: Any) -> None:
    model, tok = smol
    eng = Engine(max_batch=4, background_share=0.0)
    eng.swap(ModelSlot("m", "1", model, tok))
    shadow = collect(eng, messages=chat(QUESTIONS[2]), params=SamplingParams(max_tokens=24), background=True)
    for _ in range(6):
        eng.step()
    made = len(shadow["req"].out_ids)
    assert made >= 4
    users = [collect(eng, messages=chat(q), params=SamplingParams(max_tokens=10)) for q in QUESTIONS]
    eng.step()  # four users, four rows: the background request gives its row up
    assert eng.preempted == 1 and eng.running() == 4 and len(shadow["req"].out_ids) == made
    run(eng)
    for q, u in zip(QUESTIONS, users, strict=True):
        assert u["text"] == hf_greedy(model, tok, q, 10), q
    assert shadow["text"] == hf_greedy(model, tok, QUESTIONS[2], 24)
    assert shadow["done"].completion_tokens == len(shadow["req"].out_ids) > made


def test_seeded_sampling_repeats_and_differs_from_greedy(smol: Any) -> None:
    model, tok = smol
    eng = Engine()
    eng.swap(ModelSlot("m", "1", model, tok))
    params = dict(max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    runs = [collect(eng, prompt="My favourite colour is", params=SamplingParams(**params)) for _ in range(2)]
    run(eng)
    assert runs[0]["text"] == runs[1]["text"]


def test_swap_keeps_started_requests_on_their_version(smol: Any, tiny_llama_dir: Path) -> None:
    model, tok = smol
    tiny, tiny_tok = load_model(str(tiny_llama_dir))
    eng = Engine()
    retired: list[str] = []
    eng.on_retired = lambda slot: retired.append(slot.version)
    eng.swap(ModelSlot("m", "1", model, tok))
    old = collect(eng, prompt="Once upon a time", params=SamplingParams(max_tokens=12))
    eng.step()
    eng.swap(ModelSlot("m", "2", tiny, tiny_tok))
    new = collect(eng, prompt="Once upon a time", params=SamplingParams(max_tokens=12))
    run(eng)
    assert {d.version for d in old["deltas"]} == {"1"}
    assert {d.version for d in new["deltas"]} == {"2"}
    assert retired == ["1"]
    assert torch.is_inference_mode_enabled() is False


def test_the_engine_thread_keeps_its_torch_threads_when_a_loader_thread_drops_to_one(smol: Any) -> None:
    import threading

    from serving.worker.engine import one_thread

    model, tok = smol
    before = torch.get_num_threads()
    eng = Engine(max_batch=2, threads=2)
    eng.swap(ModelSlot("m", "1", model, tok))
    seen: dict[str, int] = {}

    def load() -> None:  # as Resident.load does, before the engine thread starts
        with one_thread():
            seen["loader"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=load)
    t.start()
    t.join()
    done = threading.Event()

    def sink(d: Delta) -> None:
        seen["engine"] = torch.get_num_threads()  # sinks are called on the engine thread
        if d.finish_reason:
            done.set()

    eng.start()
    try:
        eng.submit(messages=[{"role": "user", "content": "hi"}], params=SamplingParams(max_tokens=2), sink=sink)
        assert done.wait(60)
    finally:
        eng.stop()
        torch.set_num_threads(before)  # the count new threads start with, for the tests after this one
    assert seen == {"loader": 1, "after": before, "engine": 2}
