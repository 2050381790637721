"""Request and response schemas of the gateway (OpenAI-compatible where OpenAI has the route) and the
one error shape every route answers with: ``{"error": {"message", "type", "param", "code"}}``.
Limits live in the schemas, so the OpenAPI document states them and a bad value is answered by the
validation handler, naming the field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOKENS_LIMIT = 1024


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None,
        description="Model name (the champion), a version (name@7) or an alias (name:challenger); "
        "the served one when omitted.",
    )
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT, description="Tokens to generate at most.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int:
        return self.max_tokens or 16


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def worker_role(self) -> str:
        """The role as workers know it: OpenAI's ``developer`` is the chat template's ``system``."""
        return "system" if self.role == "developer" else self.role

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)

    def token_limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's default for completions


class GenerateRequest(BaseModel):
    """The simple query: one prompt in, the answer out (chat template applied)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1)
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    model: str | None = None
    user: str | None = Field(None, max_length=256, description="Who asks (a rollout keeps a user on one version).")

    def stops(self) -> list[str]:
        return list(self.stop)

    def token_limit(self) -> int:
        return self.max_tokens


class JobItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=128)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: int = Field(64, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(0.0, ge=0, le=2)


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[JobItem] = Field(..., min_length=1, max_length=1000)
    model: str | None = None


# -- responses -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class GenerateResponse(BaseModel):
    id: str = Field(description="The answer's id: what POST /v1/feedback names.")
    text: str
    model: str
    version: str
    digest: str = Field(description='sha256 over the version\'s registered file digests ("" for a local folder).')
    finish_reason: str
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class _Choice(BaseModel):
    index: int = 0
    finish_reason: str | None


class ChatChoice(_Choice):
    message: AssistantMessage
    logprobs: None = None


class _Answer(BaseModel):
    """What every completion answer, whole or a chunk, starts with."""

    id: str = Field(description="The answer's id: what POST /v1/feedback names.")
    created: int
    model: str
    model_version: str | None = Field(None, description="The registered version that answered.")
    weights_digest: str | None = Field(None, description="sha256 over that version's registered file digests.")


class ChatCompletion(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(_Choice):
    delta: AssistantMessage


class ChatCompletionChunk(_Answer):
    """One server-sent event of a streamed chat completion; the last one carries ``usage``."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Choice):
    text: str
    logprobs: None = None


class Completion(_Answer):
    """A text completion, whole or (without ``usage``) one server-sent event of a stream."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class FeedbackRequest(BaseModel):
    """A user's verdict on one answer: the evidence a rollout weighs, and a correction for retraining."""

    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(..., min_length=1, max_length=128, description="The answer's `id` (or its "
                             "x-lifecycle-response-id header).")  # fmt: skip
    rating: int = Field(..., ge=-1, le=1, description="-1 bad, 0 neutral, 1 good.")
    correction: str | None = Field(None, max_length=32768, description="What the answer should have been.")
    comment: str | None = Field(None, max_length=4096, description="Anything else the user wants to say.")


class FeedbackReceipt(BaseModel):
    response_id: str
    model: str
    version: str
    rating: int
    published: bool = Field(description="Announced on `lifecycle.feedback` (false: kept, not yet announced).")


class ModelCard(BaseModel):
    id: str = Field(description="What a request's `model` names: the model (its champion) or name@version.")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llm-lifecycle"
    versions: list[str] = Field(description="The versions this id is served by now.")
    digest: str | None = Field(None, description="sha256 over the version's registered file digests.")
    workers: int = Field(0, description="Workers holding it in memory.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class JobResult(BaseModel):
    item_id: str
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    version: str | None = None
    worker: str | None = None
    usage: dict[str, int] | None = None


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    model: str
    total: int
    completed: int
    created_at: str
    results: list[JobResult]
    error: str | None = None


class WorkerState(BaseModel):
    address: str
    up: bool
    model: str
    version: str
    outstanding: int
    queued: int


class Readiness(BaseModel):
    ready: bool
    workers: list[WorkerState] | None = Field(
        default=None, description="Listed without keys set, or to a caller with one."
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"
