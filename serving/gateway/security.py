"""API keys, the per-key rate limit and token budget, as a FastAPI dependency of every route but the probes.

With ``LIFECYCLE_API_KEYS`` empty there is no auth and no limit. The token budget counts what a request
may cost before it runs: its ``max_tokens`` plus its prompt estimated at one token per 4 bytes (a job:
the sum over its items), so one ``POST /v1/jobs`` of 1,000 long items cannot take a key's minute ten
times over. A key is known by a short hash of
it (``key_id``), which is what the rate limiter and the inference log see, never the key."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import Request

from lifecycle.settings import Settings
from serving.gateway.errors import APIError
from serving.gateway.ratelimit import RateLimiter


def key_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class Guard:
    """Checks a request's ``Authorization: Bearer <key>`` and takes one from its key's bucket."""

    def __init__(self, settings: Settings) -> None:
        self.keys = {key_id(k): k for k in [*settings.api_keys, *settings.admin_keys]}
        self.admins = {key_id(k) for k in settings.admin_keys}
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self.budget = RateLimiter(settings.token_limit_per_minute)

    def known(self, authorization: str) -> str | None:
        """The key id of a valid ``Authorization`` header, else None (no rate-limit token taken)."""
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        kid = key_id(token)
        return kid if token and hmac.compare_digest(self.keys.get(kid, ""), token) else None

    def check(self, authorization: str) -> str:
        """The caller's key id ("" without keys); raises 401 or 429 as ``APIError``."""
        if not self.keys:
            return ""
        kid = self.known(authorization)
        if kid is None:
            raise APIError(
                401,
                "missing or invalid API key (Authorization: Bearer <key>)",
                type="authentication_error",
                code="invalid_api_key",
            )
        wait = self.limiter.take(kid)
        if wait > 0:
            raise APIError(
                429,
                "rate limit reached for this API key",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        return kid

    def spend(self, kid: str, tokens: int) -> None:
        """Take ``tokens`` from the key's token budget; 429 naming the cost when it cannot pay now (and
        when it never can: more than a minute's budget)."""
        if not self.keys or self.budget.capacity <= 0:
            return
        if tokens > self.budget.capacity:
            budget = int(self.budget.capacity)
            raise APIError(429, f"this request may cost {tokens} tokens (max_tokens + prompt), more than this key's "
                           f"budget of {budget} a minute (LIFECYCLE_TOKEN_LIMIT_PER_MINUTE); split it",
                           type="rate_limit_error", code="token_budget_exceeded")  # fmt: skip
        wait = self.budget.take(kid, tokens)
        if wait > 0:
            raise APIError(429, f"token budget of this API key spent for now (this request: {tokens} tokens)",
                           type="rate_limit_error", code="token_budget_exceeded",
                           headers={"Retry-After": str(int(wait) + 1)})  # fmt: skip


def estimate_tokens(text: str) -> int:
    """Tokens of a prompt, estimated from its size (BPE vocabularies average about 4 bytes a token)."""
    return len(text.encode("utf-8", "surrogatepass")) // 4 + 1


def request_cost(req: Any) -> int:
    """What a worker request may cost: its ``max_tokens`` plus its prompt or messages."""
    return int(req.max_tokens) + estimate_tokens(req.prompt + "".join(m.content for m in req.messages))


async def authorize(request: Request) -> None:
    """Dependency: the app's ``Guard`` on this request; the key id is left on ``request.state``."""
    request.state.key_id = request.app.state.guard.check(request.headers.get("authorization", ""))


async def authorize_admin(request: Request) -> None:
    """Dependency of the admin routes: a key of ``LIFECYCLE_ADMIN_KEYS`` (open only when no key is set at all)."""
    guard: Guard = request.app.state.guard
    request.state.key_id = kid = guard.check(request.headers.get("authorization", ""))
    if guard.keys and kid not in guard.admins:
        raise APIError(403, "this route needs an admin key (LIFECYCLE_ADMIN_KEYS)", type="permission_error",
                       code="admin_key_required")  # fmt: skip
