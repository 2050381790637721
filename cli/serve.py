"""``lifecycle serve`` (the gateway and its gRPC workers, as local-stack services) and ``lifecycle query``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from cli.common import fail, settings
from lifecycle.settings import Settings


def serve(
    workers: Annotated[
        int, typer.Option(help="gRPC inference workers (default LIFECYCLE_WORKERS; 0: one per GPU, else per 16 cores).")
    ] = 0,
    model_path: Annotated[str, typer.Option(help="Serve a local HF folder while the registry has no champion.")] = "",
    detach: Annotated[bool, typer.Option(help="Leave the gateway and workers running in the background.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop a detached gateway and its workers.")] = False,
) -> None:
    """The gateway (REST + OpenAI API) on LIFECYCLE_GATEWAY_PORT and N gRPC workers serving the champion;
    workers hot-swap to each promoted version."""
    from lifecycle.stack.base import StackError
    from lifecycle.stack.serving import gateway_url, start_serving, stop_serving

    cfg = settings()
    if stop:
        stop_serving(cfg, report=typer.echo)
        return
    try:
        start_serving(cfg, workers or cfg.worker_count(), model_path, report=typer.echo)
    except StackError as exc:
        stop_serving(cfg, report=lambda m: None)
        fail(str(exc))
    typer.echo(f"gateway ready: {gateway_url(cfg)}/v1  (OpenAI base_url)")
    if detach:
        return
    try:
        while True:
            time.sleep(1)  # foreground until Ctrl-C
    except KeyboardInterrupt:
        stop_serving(cfg, report=typer.echo)


def query(
    prompt: Annotated[str, typer.Argument(help="The question.")],
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 64,
) -> None:
    """Ask the served model (POST /v1/generate on the gateway)."""
    answer = ask(settings(), prompt, max_tokens)
    typer.echo(answer["text"])
    typer.echo(f"({answer['model']} v{answer['version']}, {answer['usage']['completion_tokens']} tokens)", err=True)


def ask(cfg: Settings, prompt: str, max_tokens: int) -> dict[str, Any]:
    """``POST /v1/generate`` on the gateway; a failure exits with the gateway's answer."""
    from lifecycle.stack.serving import gateway_url

    url = gateway_url(cfg)
    req = urllib.request.Request(
        url + "/v1/generate",
        data=json.dumps({"prompt": prompt, "max_tokens": max_tokens}).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {cfg.api_keys[0]}"} if cfg.api_keys else {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        fail(f"gateway answered {exc.code}: {exc.read().decode(errors='replace')}")
    except OSError as exc:
        fail(f"gateway at {url} is not answering ({exc}); start it with `lifecycle serve`")
