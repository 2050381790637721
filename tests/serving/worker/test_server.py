"""The worker's gRPC server in-process, on the tiny Llama: a prompt being templated and tokenized does
not hold up the server's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health

from lifecycle.settings import Settings, load_settings
from lifecycle.v1 import inference_pb2, inference_pb2_grpc
from serving.worker.engine import Delta, Engine, ModelSlot
from serving.worker.resident import Resident
from serving.worker.server import InferenceServicer, _Mailbox, create_server, stream_gap
from training.generation import load_model


class HeldTokenizer:
    """The model's tokenizer, except that encoding a text with HOLD in it waits for ``release`` (as a
    long prompt keeps the tokenizer busy); everything else passes through."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.entered, self.release = tok, threading.Event(), threading.Event()

    def __call__(self, text: str, **kw: Any) -> Any:
        if "HOLD" in text:
            self.entered.set()
            self.release.wait(20)
        return self.tok(text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tok, name)


@contextlib.contextmanager
def served(engine: Engine, settings: Settings) -> Iterator[tuple[asyncio.AbstractEventLoop, int, InferenceServicer]]:
    """A worker's gRPC server for ``engine`` on a port, its event loop in its own thread (as in the worker
    process): (loop, port, servicer); stopped on leaving."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int, InferenceServicer]:
        servicer = InferenceServicer(settings, "w", engine, lambda slot: None, Resident(settings, engine))
        server, port = create_server(servicer, health.HealthServicer(), 0)
        await server.start()
        return server, port, servicer

    server, port, servicer = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield loop, port, servicer
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class WatchedMailbox(_Mailbox):
    """The server's mailbox, telling when an answer's last delta has been posted by the engine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.finished = threading.Event()
        self.hold: threading.Event | None = None  # set: the loop is kept busy from the next delta until it is set

    def post(self, queue: asyncio.Queue[Delta], d: Delta) -> None:
        if self.hold is not None:  # queued before this delta's delivery: nothing of the answer is sent meanwhile
            self.loop.call_soon_threadsafe(self.hold.wait, 30)
            self.hold = None
        super().post(queue, d)
        if d.finish_reason:
            self.finished.set()


def test_status_is_answered_while_a_prompt_is_being_tokenized(tiny_llama_dir: Path) -> None:
    model, tok = load_model(str(tiny_llama_dir))
    held = HeldTokenizer(tok)
    engine = Engine(max_batch=4)
    engine.swap(ModelSlot("m", "1", model, held))
    with served(engine, load_settings()) as (_, port, _servicer):
        engine.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                call = stub.Generate(inference_pb2.GenerateRequest(prompt="HOLD this", max_tokens=2), timeout=60)
                assert held.entered.wait(20)  # the worker is tokenizing the prompt now
                status = stub.ModelStatus(inference_pb2.ModelStatusRequest(), timeout=10)
                assert status.worker == "w"  # answered while the prompt was held
                held.release.set()
                assert list(call)[-1].finish_reason in ("stop", "length")
        finally:
            held.release.set()
            engine.stop()


def test_load_model_needs_an_admin_key_and_may_name_only_known_folders(tmp_path: Path) -> None:
    """The admin ``LoadModel``: with admin keys set, a call without one is refused; a ``path`` outside the
    worker's own ``--model-path`` and the model cache is refused whoever asks (pure: no model loaded)."""
    settings = load_settings(admin_keys=["adm-1"], cache_dir=tmp_path / "cache")
    engine = Engine(max_batch=1)
    servicer = InferenceServicer(settings, "w", engine, lambda slot: None, Resident(settings, engine))
    servicer.model_path = str(tmp_path / "own")
    assert "needs an admin key" in (servicer.load_refusal("", "") or "")
    assert "needs an admin key" in (servicer.load_refusal("", "Bearer wrong") or "")
    assert servicer.load_refusal("", "Bearer adm-1") is None  # a registered version: loaded verified
    assert servicer.load_refusal(str(tmp_path / "own"), "Bearer adm-1") is None
    assert servicer.load_refusal(str(settings.models_dir / "some-model"), "Bearer adm-1") is None
    for path in ("/etc", str(tmp_path / "elsewhere"), str(settings.models_dir / ".." / "..")):
        assert "is neither this worker's --model-path" in (servicer.load_refusal(path, "Bearer adm-1") or ""), path


def test_tokens_made_while_the_loop_was_busy_go_out_as_one_message(tiny_llama_dir: Path) -> None:
    """A stream's deltas that pile up while the worker's event loop is busy (under load: the engine thread
    holds the cores) are sent as one message, whose text is theirs joined: the same answer in fewer messages."""
    model, tok = load_model(str(tiny_llama_dir))
    engine = Engine(max_batch=2)
    slot = ModelSlot("m", "1", model, tok)
    slot.eos_ids = set()  # every answer runs to max_tokens
    engine.swap(slot)
    busy = threading.Event()
    # a message a token, unless the loop falls behind
    with served(engine, load_settings(stream_interval=0, stream_rate=0)) as (loop, port, servicer):
        mailbox = servicer._mailbox = WatchedMailbox(loop)
        engine.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                ask = inference_pb2.GenerateRequest(prompt="Once upon a time", max_tokens=32)
                free = list(stub.Generate(ask, timeout=60))
                mailbox.finished.clear()
                mailbox.hold = busy  # the loop busy from the first delta on: the deltas wait in the mailbox
                call = stub.Generate(ask, timeout=60)
                assert mailbox.finished.wait(30)  # the engine has posted the whole answer meanwhile
                busy.set()
                held = list(call)
        finally:
            busy.set()
            engine.stop()
    assert len(free) > 1 and free[-1].usage.completion_tokens == 32  # the loop kept up, at least in part
    # every token was made while the loop was busy: the answer came in one message
    assert len(held) == 1 and held[0].finish_reason == "length" and held[0].usage.completion_tokens == 32
    assert held[0].text == "".join(r.text for r in free)


def test_a_stream_sends_its_first_token_at_once_and_the_rest_no_more_often_than_the_interval(
    tiny_llama_dir: Path,
) -> None:
    model, tok = load_model(str(tiny_llama_dir))
    engine = Engine(max_batch=2)
    slot = ModelSlot("m", "1", model, tok)
    slot.eos_ids = set()
    engine.swap(slot)
    answers = {}
    engine.start()
    try:
        # 5 s between messages, longer than the whole answer takes here: by the interval, or as the one
        # stream's share of 0.2 messages a second
        for interval, rate in ((0.0, 0.0), (5.0, 0.0), (0.0, 0.2)):
            with served(engine, load_settings(stream_interval=interval, stream_rate=rate)) as (_, port, _servicer):
                channel = grpc.insecure_channel(f"127.0.0.1:{port}")
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                ask = inference_pb2.GenerateRequest(prompt="Once upon a time", max_tokens=24)
                answers[interval, rate] = list(stub.Generate(ask, timeout=60))
                channel.close()
    finally:
        engine.stop()
    every = answers[0.0, 0.0]
    for paced in (answers[5.0, 0.0], answers[0.0, 0.2]):
        assert len(every) > 2 and "".join(r.text for r in every) == "".join(r.text for r in paced)
        # the first message at once (a token, or the few a busy loop let pile up), then the rest at the end
        assert len(paced) == 2 and paced[0].text and "".join(r.text for r in every).startswith(paced[0].text)
        assert paced[-1].finish_reason == "length" and paced[-1].usage.completion_tokens == 24


def test_the_gap_between_a_streams_messages_grows_with_the_streams_sharing_the_rate() -> None:
    assert stream_gap(0.05, 200, 1) == 0.05  # the interval: one stream's share, 5 ms, is shorter
    assert stream_gap(0.05, 200, 8) == 0.05
    assert stream_gap(0.05, 200, 32) == 32 / 200  # a full batch: 0.16 s, a few tokens a message
    assert stream_gap(0.05, 0, 32) == 0.05  # no rate: the interval alone
    assert stream_gap(0, 0, 32) == 0
