"""OpenAI-compatible ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true`` -> SSE)
and ``GET /v1/models``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from lifecycle.v1 import inference_pb2
from serving.gateway.body import body_doc, json_body
from serving.gateway.completions import answer_headers, collect, sse, usage
from serving.gateway.errors import APIError
from serving.gateway.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    Usage,
)
from serving.gateway.routes.deps import ERRORS, CompletionsDep, KeyId
from serving.gateway.security import authorize, request_cost

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events with stream: true"}
}


ChatBody = Annotated[ChatCompletionRequest, Depends(json_body(ChatCompletionRequest))]
CompletionBody = Annotated[CompletionRequest, Depends(json_body(CompletionRequest))]


@router.post("/chat/completions", response_model=ChatCompletion, responses=SSE,
             openapi_extra=body_doc(ChatCompletionRequest))  # fmt: skip
async def chat(
    body: ChatBody, completions: CompletionsDep, key_id: KeyId, request: Request, response: Response
) -> ChatCompletion | StreamingResponse:
    model = completions.model(body.model)
    messages = [inference_pb2.ChatMessage(role=m.worker_role, content=m.text()) for m in body.messages]
    if not any(m.content.strip() for m in messages):
        raise APIError(400, "messages: every message is empty", param="messages")
    req = completions.request(body, model, messages=messages)
    request.app.state.guard.spend(key_id, request_cost(req))
    cid, created = f"chatcmpl-{req.request_id}", int(time.time())
    logged = {"messages": [m.model_dump() for m in body.messages]}
    responses = completions.run(req, "/v1/chat/completions", logged, key_id, stream=body.stream, response_id=cid,
                                user=_user(body.user, key_id, request))  # fmt: skip
    if body.stream:

        def chunk(r: inference_pb2.GenerateResponse) -> ChatCompletionChunk:
            choice = ChatChunkChoice(delta=AssistantMessage(content=r.text), finish_reason=r.finish_reason or None)
            return ChatCompletionChunk(id=cid, created=created, model=model, system_fingerprint=f"v{r.version}",
                                       choices=[choice], usage=usage(r) if r.finish_reason else None,
                                       model_version=r.version, weights_digest=r.digest)  # fmt: skip

        return await sse(responses, chunk, cid)
    text, last = await collect(responses, request)
    response.headers.update(answer_headers(cid, last))
    choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason if last else "stop")
    return ChatCompletion(id=cid, created=created, model=model, choices=[choice], usage=usage(last),
                          system_fingerprint=f"v{last.version}" if last else None,
                          model_version=last.version if last else None,
                          weights_digest=last.digest if last else None)  # fmt: skip


@router.post("/completions", response_model=Completion, responses=SSE, openapi_extra=body_doc(CompletionRequest))
async def completion(
    body: CompletionBody, completions: CompletionsDep, key_id: KeyId, request: Request, response: Response
) -> Completion | StreamingResponse:
    model = completions.model(body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "prompt: exactly one prompt per request", param="prompt")
    if not prompts[0]:
        raise APIError(400, "prompt is empty", param="prompt")
    req = completions.request(body, model, prompt=prompts[0])
    request.app.state.guard.spend(key_id, request_cost(req))
    cid, created = f"cmpl-{req.request_id}", int(time.time())
    responses = completions.run(req, "/v1/completions", {"prompt": prompts[0]}, key_id, stream=body.stream,
                                response_id=cid, user=_user(body.user, key_id, request))  # fmt: skip

    def answer(text: str, last: inference_pb2.GenerateResponse | None, used: Usage | None) -> Completion:
        choice = CompletionChoice(text=text, finish_reason=(last.finish_reason or None) if last else "stop")
        return Completion(id=cid, created=created, model=model, choices=[choice], usage=used,
                          model_version=last.version if last else None,
                          weights_digest=last.digest if last else None)  # fmt: skip

    if body.stream:
        return await sse(responses, lambda r: answer(r.text, r, None), cid)
    text, last = await collect(responses, request)
    response.headers.update(answer_headers(cid, last))
    return answer(text, last, usage(last))


def _user(user: str | None, key_id: str, request: Request) -> str:
    """Who a request is for a rollout's sticky assignment: the ``user`` field, else the API key, else the
    client's address."""
    return user or key_id or (request.client.host if request.client else "")


@router.get("/models", response_model=ModelList)
async def models(completions: CompletionsDep) -> ModelList:
    """Each served model (its champion), then every version some worker holds in memory (name@version:
    requests may name it; versions not in memory are loaded on demand)."""
    cards = []
    for name, ws in completions.pool.models().items():
        cards.append(ModelCard(id=name, versions=sorted({w.version for w in ws}), digest=None, workers=len(ws)))
        held: dict[str, tuple[str, int]] = {}
        for w in ws:
            for model, version, digest in w.loaded:
                if model == name and version.isdigit():  # addressable as name@version
                    held[version] = (digest, held.get(version, ("", 0))[1] + 1)
        for version, (digest, n) in sorted(held.items(), key=lambda kv: int(kv[0])):
            cards.append(ModelCard(id=f"{name}@{version}", versions=[version], digest=digest or None, workers=n))
    return ModelList(data=cards)
