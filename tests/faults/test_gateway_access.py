"""Who may use the gateway: every route but the two probes asks for a key, found by walking the app's
routes (a route added later is covered without editing this test); a job is read only by the key that
created it (or an admin key); a key's token budget caps what its requests may cost, a job's items
summed; a gateway refuses to listen beyond loopback without keys."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lifecycle.settings import Settings, load_settings
from serving.gateway.__main__ import exposure_error
from serving.gateway.app import create_app
from tests.serving.gateway.test_app import ScriptedPool

OPEN = {"/healthz", "/readyz"}


def test_every_route_but_the_probes_needs_a_key() -> None:
    app = create_app(Settings(api_keys=["k1"], admin_keys=["a1"]), [], log_inference=False, pool=ScriptedPool())
    routes = [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in sorted(r.methods - {"HEAD"})]
    assert len(routes) >= 12 and {p for _, p in routes} >= OPEN | {"/v1/jobs", "/v1/chat/completions"}
    with TestClient(app) as client:
        for method, path in routes:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = client.request(method, concrete, headers=headers, json={})
                if path in OPEN:
                    assert r.status_code in (200, 503), (method, path, r.status_code)
                else:
                    assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        # An API key that is not an admin key gets 403 on the admin routes, never their work.
        r = client.post("/v1/rollouts/m/abort", headers={"Authorization": "Bearer k1"}, json={})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"


def test_a_keys_token_budget_caps_requests_and_jobs() -> None:
    s = Settings(api_keys=["k1", "k2"], token_limit_per_minute=1000, rate_limit_per_minute=0)
    with TestClient(create_app(s, [], log_inference=False, pool=ScriptedPool())) as client:
        k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))
        body = {"prompt": "hi", "max_tokens": 400}
        assert [client.post("/v1/generate", json=body, headers=k1).status_code for _ in range(2)] == [200, 200]
        r = client.post("/v1/generate", json=body, headers=k1)
        assert r.status_code == 429 and r.json()["error"]["code"] == "token_budget_exceeded"
        assert int(r.headers["Retry-After"]) >= 1 and "this request: 401 tokens" in r.json()["error"]["message"]
        assert client.post("/v1/generate", json=body, headers=k2).status_code == 200  # budgets are per key
        # One job of 1,000 items x 1,024 tokens: refused as a whole, naming what it costs and the budget.
        job = {"items": [{"prompt": "x" * 40, "max_tokens": 1024} for _ in range(1000)]}
        r = client.post("/v1/jobs", json=job, headers=k2)
        assert r.status_code == 429 and "may cost 1035000 tokens" in r.json()["error"]["message"]
        assert "budget of 1000 a minute" in r.json()["error"]["message"]
        # A prompt counts too: 4 KB of prompt is ~1,000 tokens.
        r = client.post("/v1/chat/completions", headers=k2, json={"messages": [{"role": "user", "content": "y" * 4096}],
                        "max_tokens": 1})  # fmt: skip
        assert r.status_code == 429 and "may cost 1026 tokens" in r.json()["error"]["message"]


@pytest.mark.stack
def test_a_job_is_read_only_by_the_key_that_created_it_or_an_admin(stack: Settings) -> None:
    model = f"owned-{uuid.uuid4().hex[:8]}"
    s = load_settings(api_keys=["owner-key", "other-key"], admin_keys=["admin-key"])
    with TestClient(create_app(s, [], log_inference=False, pool=ScriptedPool(model=model))) as client:
        owner, other, admin = ({"Authorization": f"Bearer {k}"} for k in ("owner-key", "other-key", "admin-key"))
        created = client.post("/v1/jobs", json={"items": [{"prompt": "hi", "max_tokens": 2}]}, headers=owner)
        assert created.status_code == 202, created.text
        job = created.json()["id"]
        assert "owner" not in created.json()
        assert client.get(f"/v1/jobs/{job}", headers=owner).status_code == 200
        assert client.get(f"/v1/jobs/{job}", headers=admin).status_code == 200
        r = client.get(f"/v1/jobs/{job}", headers=other)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"  # not even that it exists


def test_the_gateway_refuses_to_listen_beyond_loopback_without_keys() -> None:
    open_ = Settings()
    assert exposure_error(open_, "127.0.0.1") is None and exposure_error(open_, "::1") is None
    assert exposure_error(open_, "localhost") is None
    for host in ("0.0.0.0", "10.1.2.3", "::", "gateway.internal"):
        assert "refusing to listen on" in (exposure_error(open_, host) or ""), host
    assert exposure_error(Settings(api_keys=["k"]), "0.0.0.0") is None
    assert exposure_error(Settings(allow_open_gateway=True), "0.0.0.0") is None
    # The process itself: exits 2 with the reason, before binding anything.
    env = {"PATH": "/usr/bin:/bin", "LIFECYCLE_API_KEYS": ""}
    done = subprocess.run([sys.executable, "-m", "serving.gateway", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0 without API keys" in done.stderr, done.stderr
