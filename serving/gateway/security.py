"""API keys and the per-key rate limit, as a FastAPI dependency of every route but the probes.

With ``LIFECYCLE_API_KEYS`` empty there is no auth and no limit. A key is known by a short hash of
it (``key_id``), which is what the rate limiter and the inference log see, never the key."""

from __future__ import annotations

import hashlib
import hmac

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
