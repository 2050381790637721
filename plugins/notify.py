"""Telling people when a lifecycle DAG run fails: an Airflow notifier (``BaseNotifier``) every project DAG
has as its ``on_failure_callback``. It mails ``LIFECYCLE_NOTIFY_EMAIL`` through ``LIFECYCLE_SMTP_URL``
and/or POSTs JSON to ``LIFECYCLE_NOTIFY_WEBHOOK`` (Slack-compatible ``text``), naming the DAG, the run,
the failed task and the reason, with the run's address. Nothing configured: nothing sent. A mail server
or webhook that is down is logged and never fails the callback. (The run's failure also reaches
``lifecycle.pipeline-events`` through the listener, ``plugins/pipeline_events.py``.)"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.request
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)
TIMEOUT_S = 10


def describe(context: dict[str, Any]) -> dict[str, str]:
    """What a failure notice says, from an Airflow callback context."""
    from lifecycle import links
    from lifecycle.settings import load_settings

    run = context.get("dag_run")
    dag_id = str(getattr(context.get("dag"), "dag_id", "") or getattr(run, "dag_id", ""))
    run_id = str(context.get("run_id") or getattr(run, "run_id", ""))
    ti = context.get("ti") or context.get("task_instance")
    task = str(getattr(ti, "task_id", "") or "")
    reason = str(context.get("reason") or context.get("exception") or "")
    url = links.airflow_run(load_settings(), dag_id, run_id) if dag_id and run_id else ""
    text = f"llm-lifecycle: {dag_id} run {run_id} failed" + (f" at task {task}" if task else "")
    text += (f" ({reason})" if reason else "") + (f"\n{url}" if url else "")
    return {"dag_id": dag_id, "run_id": run_id, "task_id": task, "reason": reason, "url": url, "text": text}


def send_mail(smtp_url: str, sender: str, to: list[str], subject: str, body: str) -> None:
    """One mail through ``smtp_url`` (smtp://[user:password@]host:port, STARTTLS when offered; smtps://)."""
    parts = urlsplit(smtp_url)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(to), subject
    msg.set_content(body)
    cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with cls(parts.hostname or "127.0.0.1", parts.port or (465 if parts.scheme == "smtps" else 25),
             timeout=TIMEOUT_S) as smtp:  # fmt: skip
        if parts.scheme == "smtp" and smtp.has_extn("starttls"):
            smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(msg)


class FailureNotifier(BaseNotifier):
    """Mail and/or webhook on a failed DAG run, as the settings say."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        from lifecycle.settings import load_settings

        s = load_settings()
        if not s.notify_email and not s.notify_webhook:
            return
        notice = describe(dict(context))
        if s.notify_email:
            try:
                send_mail(s.smtp_url, s.notify_from, s.notify_email, notice["text"].splitlines()[0], notice["text"])
            except (OSError, smtplib.SMTPException) as exc:
                log.warning("failure notice not mailed to %s: %s", s.notify_email, exc)
        if s.notify_webhook:
            req = urllib.request.Request(s.notify_webhook, data=json.dumps(notice).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            try:
                urllib.request.urlopen(req, timeout=TIMEOUT_S).close()
            except OSError as exc:
                log.warning("failure notice not posted to the webhook: %s", exc)
