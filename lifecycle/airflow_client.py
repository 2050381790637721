"""A small client of the Airflow 3 REST API of the local stack (as its admin user): the demo and tests use it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from lifecycle.settings import Settings
from lifecycle.stack.airflow import admin_credentials
from lifecycle.stack.process import wait_for


class AirflowApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


# An idempotent request that meets "Database error" (SQLite's lock held by a busy scheduler, a dropped
# connection) is sent again after these pauses; a POST is not (it could create a second run).
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)


def call(
    settings: Settings,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    pauses: tuple[float, ...] = RETRY_PAUSES,
) -> dict[str, Any]:
    for pause in pauses:
        try:
            return _call_once(settings, method, path, body)
        except AirflowApiError as exc:
            if not _transient(method, exc):
                raise
        time.sleep(pause)
    return _call_once(settings, method, path, body)  # the last try: its error is raised as it is


def _transient(method: str, exc: AirflowApiError) -> bool:
    return method in ("GET", "PATCH", "PUT", "DELETE") and exc.status in (500, 503) and "Database error" in exc.body


def _call_once(settings: Settings, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    creds = admin_credentials(settings)
    if creds is None:
        raise AirflowApiError(401, "the local stack's Airflow has no admin credentials yet (run `lifecycle up`)")
    base = f"http://{settings.host}:{settings.airflow_port}"
    req = urllib.request.Request(
        f"{base}/auth/token",
        data=json.dumps({"username": creds[0], "password": creds[1]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        token = json.loads(resp.read())["access_token"]
    req = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.loads(resp.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        raise AirflowApiError(exc.code, exc.read().decode(errors="replace")) from None


def dag_ids(settings: Settings) -> set[str]:
    return {d["dag_id"] for d in call(settings, "GET", "/api/v2/dags?limit=100")["dags"]}


def trigger_and_wait(settings: Settings, dag_id: str, conf: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Unpause, trigger with ``conf``, wait for a final state; returns the run and its task states."""
    if wait_for(lambda: dag_id in dag_ids(settings), timeout=120) != "ok":
        raise AirflowApiError(404, f"DAG {dag_id} was not parsed within 120 s (see the dag-processor log)")
    call(settings, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    run = call(settings, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
    final = {"success", "failed"}
    if wait_for(lambda: call(settings, "GET", path)["state"] in final, timeout=timeout, interval=1) != "ok":
        raise AirflowApiError(408, f"run {run['dag_run_id']} of {dag_id} did not finish within {timeout:.0f} s")
    tis = call(settings, "GET", path + "/taskInstances")["task_instances"]
    return {**call(settings, "GET", path), "tasks": {t["task_id"]: t["state"] for t in tis}}
