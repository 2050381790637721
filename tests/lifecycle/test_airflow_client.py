"""The Airflow client sends an idempotent request again when Airflow answers "Database error" (SQLite's lock
held by a busy scheduler) and never sends a POST twice. The server here is a real HTTP server on a port,
answering as Airflow's API server does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from lifecycle.airflow_client import AirflowApiError, call
from lifecycle.settings import Settings, load_settings
from lifecycle.stack.airflow import airflow_home

DB_ERROR = {"detail": {"reason": "Database error", "statement": "hidden", "orig_error": "hidden"}}


class Api(BaseHTTPRequestHandler):
    failures = 0  # how many requests to /api/ still answer 500 "Database error"
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/auth/token":
            return self._answer(201, {"access_token": "t"})
        type(self).seen.append(self.command)
        if type(self).failures > 0:
            type(self).failures -= 1
            return self._answer(500, DB_ERROR)
        self._answer(200, {"is_paused": True})

    do_GET = do_PATCH = do_POST = _handle


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Settings]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = load_settings(home=tmp_path, host="127.0.0.1", airflow_port=server.server_address[1])
    airflow_home(settings).mkdir(parents=True, exist_ok=True)
    (airflow_home(settings) / "lifecycle-secrets.json").write_text(json.dumps({"admin_password": "p"}))
    Api.seen = []
    yield settings
    server.shutdown()


def test_a_patch_that_meets_database_errors_is_sent_again_until_it_succeeds(api: Settings) -> None:
    Api.failures = 2
    assert call(api, "PATCH", "/api/v2/dags/d", {"is_paused": True}) == {"is_paused": True}
    assert Api.seen == ["PATCH"] * 3


def test_a_post_that_meets_a_database_error_is_not_sent_twice(api: Settings) -> None:
    Api.failures = 1
    with pytest.raises(AirflowApiError, match="Database error") as err:
        call(api, "POST", "/api/v2/dags/d/dagRuns", {"conf": {}})
    assert err.value.status == 500 and Api.seen == ["POST"]


def test_a_lasting_database_error_is_raised_after_the_last_retry(api: Settings) -> None:
    Api.failures = 100
    with pytest.raises(AirflowApiError, match="Database error"):
        call(api, "GET", "/api/v2/dags", pauses=(0.01, 0.01, 0.01))
    assert Api.seen == ["GET"] * 4
