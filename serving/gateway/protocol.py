"""Request and response schemas of the gateway (OpenAI-compatible where OpenAI has the route) and the
one error shape every route answers with: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOKENS_LIMIT = 1024


class APIError(Exception):
    """An error answered with the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Model name; the served one when omitted.")
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
    model: str | None = None


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
