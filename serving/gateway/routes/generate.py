"""``POST /v1/generate``: the simple query, one prompt in, the answer out (chat template applied)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from lifecycle.v1 import inference_pb2
from serving.gateway.body import body_doc, json_body
from serving.gateway.completions import answer_headers, collect, usage
from serving.gateway.errors import APIError
from serving.gateway.protocol import GenerateRequest, GenerateResponse
from serving.gateway.routes.deps import ERRORS, CompletionsDep, KeyId
from serving.gateway.security import authorize, request_cost

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=ERRORS)


@router.post("/generate", response_model=GenerateResponse, openapi_extra=body_doc(GenerateRequest))
async def generate(
    body: Annotated[GenerateRequest, Depends(json_body(GenerateRequest))],
    completions: CompletionsDep,
    key_id: KeyId,
    request: Request,
    response: Response,
) -> GenerateResponse:
    model = completions.model(body.model)
    if not body.prompt.strip():
        raise APIError(400, "prompt is empty", param="prompt")
    messages = [inference_pb2.ChatMessage(role="user", content=body.prompt)]
    req = completions.request(body, model, messages=messages)
    request.app.state.guard.spend(key_id, request_cost(req))
    rid = f"gen-{req.request_id}"
    user = body.user or key_id or (request.client.host if request.client else "")
    responses = completions.run(req, "/v1/generate", {"prompt": body.prompt}, key_id, stream=False,
                                response_id=rid, user=user)  # fmt: skip
    text, last = await collect(responses, request)
    response.headers.update(answer_headers(rid, last))
    return GenerateResponse(id=rid, text=text, model=model, version=last.version if last else "",
                            digest=last.digest if last else "", finish_reason=last.finish_reason if last else "",
                            usage=usage(last))  # fmt: skip
