"""A failed lifecycle DAG run is told to the operators: mailed through a real local SMTP server
(aiosmtpd, on the port the test stack's ``LIFECYCLE_SMTP_URL`` names) to ``LIFECYCLE_NOTIFY_EMAIL``."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from lifecycle import links
from lifecycle.airflow_client import trigger_and_wait
from lifecycle.settings import Settings
from lifecycle.stack.process import wait_for

pytestmark = pytest.mark.stack


class Inbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


def test_a_failed_run_is_mailed_to_the_operators(stack: Settings, tmp_path: Path) -> None:
    from urllib.parse import urlsplit

    from aiosmtpd.controller import Controller

    smtp = urlsplit(stack.smtp_url)
    inbox = Inbox()
    server = Controller(inbox, hostname=smtp.hostname, port=smtp.port)
    server.start()
    try:
        missing = tmp_path / "missing.jsonl"  # ingest fails at once (no retry: bad data stays bad)
        run = trigger_and_wait(stack, "llm_lifecycle", {"dataset_path": str(missing)}, timeout=300)
        assert run["state"] == "failed" and run["tasks"]["ingest"] == "failed", run
        mine = lambda: [m for m in inbox.mails if run["dag_run_id"] in m[1]["Subject"]]  # noqa: E731
        assert wait_for(lambda: bool(mine()), timeout=120) == "ok", [m[1]["Subject"] for m in inbox.mails]
    finally:
        server.stop()
    to, mail = mine()[0]
    assert to == stack.notify_email and mail["From"] == stack.notify_from
    assert mail["Subject"].startswith(f"llm-lifecycle: llm_lifecycle run {run['dag_run_id']} failed")
    assert "failed at task ingest" in mail["Subject"]
    body = mail.get_content()
    assert links.airflow_run(stack, "llm_lifecycle", run["dag_run_id"]) in body
