"""The "LLM lifecycle" page in the Airflow UI: an Airflow 3 plugin that mounts a small FastAPI app on the
api-server (``/lifecycle/``) and shows it in Airflow's navigation as an external view (an iframe at
``/plugin/llm-lifecycle``). It lists each model's champion and challenger with the champion's
evaluation and training figures, the recent training runs and rollouts, each linking to its MLflow run
or version and its Airflow DAG run. Only a logged-in Airflow user sees it (Airflow's own token, the
cookie the UI holds). ``/lifecycle/api/summary`` is the same as JSON. Tasks of the lifecycle DAGs get
extra links to their MLflow run and model version."""

from __future__ import annotations

import html
from typing import Any, ClassVar

from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

app = FastAPI(title="LLM lifecycle", docs_url=None, redoc_url=None, openapi_url=None)
FIGURES = ("figures/evaluation.png", "figures/training_curves.png")

STYLE = """
body{font-family:system-ui,sans-serif;margin:20px;color:#1a202c}h1{font-size:22px}h2{font-size:17px;margin-top:26px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e2e8f0;padding:4px 10px;text-align:left}
th{background:#f7fafc}a{color:#017cee}.card{border:1px solid #e2e8f0;border-radius:8px;padding:12px;margin:10px 0}
.muted{color:#718096;font-size:12px}img{max-width:100%;border:1px solid #e2e8f0;margin-top:8px}
.ok{color:#2f855a}.bad{color:#c53030}
"""


def _summary() -> dict[str, Any]:
    from lifecycle import overview
    from lifecycle.settings import load_settings
    from lifecycle.store import Store

    settings = load_settings()
    with Store.connect(settings) as store:
        return overview.summary(settings, store)


def _a(url: str, text: str) -> str:
    return f'<a href="{html.escape(url)}" target="_blank" rel="noopener">{html.escape(text)}</a>' if url else ""


def _version_card(name: str, alias: str, v: dict[str, Any]) -> str:
    e = html.escape
    version, run = _a(v["mlflow_url"], f"v{v['version']}"), _a(v["run_url"], v["run_id"] or "")
    parts = [f'<div class="card" data-alias="{alias}"><b>{e(alias)}</b>: {e(name)} {version} · MLflow run {run}']
    if v.get("tainted"):
        parts.append(f' <span class="bad">tainted by {e(v["tainted"])}</span>')
    if v.get("decision"):
        parts.append(f'<div class="muted">gate: {e(v["decision"])}</div>')
    ev = v.get("evaluation")
    if ev and ev.get("preview"):
        g, base = ev["preview"], ev["baseline"]
        against = base["kind"] + (f" v{base['version']}" if base.get("version") else "")
        ci = f"[{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
        parts.append(f'<div class="muted">evaluated on {ev["items"]} items of {e(ev["dataset_id"])} against the '
                     f'{e(against)}: {e(g["metric"])} {g["candidate"]:.3f} vs {g["baseline"]:.3f}, effect '
                     f'{g["effect"]:+.3f} {ci} ({e(g["test"])})</div>')  # fmt: skip
    if v.get("run_id"):  # a run from before figures were logged has none: the image removes itself
        for fig in FIGURES:
            parts.append(f'<img alt="{e(fig)}" src="figure/{e(v["run_id"])}/{e(fig)}" onerror="this.remove()">')
    parts.append("</div>")
    return "".join(parts)


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]], links: dict[str, str]) -> str:
    """``cols``: (key, heading); ``links``: key -> key of the URL that key's cell links to."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = []
    for r in rows:
        cells = []
        for key, _ in cols:
            value = r.get(key)
            text = f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)
            cells.append(f"<td>{_a(r.get(links[key], ''), text) if key in links else html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body) or '<tr><td>none yet</td></tr>'}</table>"


def render(data: dict[str, Any]) -> str:
    models = "".join(
        _version_card(m["name"], alias, m[alias]) for m in data["models"] for alias in ("champion", "challenger")
        if alias in m
    ) or "<p>No model has a champion yet: trigger <code>llm_lifecycle</code> or publish training data.</p>"  # fmt: skip
    runs = _table(data["training_runs"], [("run_id", "training run"), ("status", "status"), ("dataset_id", "dataset"),
                                          ("final_loss", "final loss"), ("created_at", "started"),
                                          ("airflow", "Airflow run")],
                  {"run_id": "mlflow_url", "airflow": "airflow_url"})  # fmt: skip
    rollouts = _table(data["rollouts"], [("id", "rollout"), ("policy", "policy"), ("state", "state"),
                                         ("stage", "stage"), ("share", "share"), ("champion", "vs champion")],
                      {"id": "mlflow_url"})  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLM lifecycle</title><style>{STYLE}</style>"
            f"</head><body><h1>LLM lifecycle</h1><p class='muted'>Registry and runs in "
            f"{_a(data['mlflow'], 'MLflow')}; figures are each version's, logged by its training and evaluation."
            f"</p><h2>Models</h2>{models}<h2>Recent training runs</h2>{runs}<h2>Rollouts</h2>{rollouts}"
            "</body></html>")  # fmt: skip


@app.get("/", response_class=HTMLResponse)
def page(user: GetUserDep) -> str:
    return render(_summary())


@app.get("/api/summary")
def summary(user: GetUserDep) -> dict[str, Any]:
    return _summary()


@app.get("/figure/{run_id}/figures/{name}")
def figure(run_id: str, name: str, user: GetUserDep) -> Response:
    """A figure of an MLflow run, read through the tracking server (the browser may not reach MLflow's
    artifact store); only the names this page shows."""
    import mlflow

    from lifecycle.settings import load_settings

    path = f"figures/{name}"
    if path not in FIGURES or not run_id.isalnum():
        raise HTTPException(404, f"no figure {path!r}")
    mlflow.set_tracking_uri(load_settings().mlflow_tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{path}")
    except Exception as exc:  # noqa: BLE001 - MLflow's errors vary by store; the run has no such figure
        raise HTTPException(404, f"run {run_id} has no {path}: {type(exc).__name__}") from None
    with open(local, "rb") as f:
        return Response(f.read(), media_type="image/png", headers={"Cache-Control": "max-age=300"})


class MlflowRunLink(BaseOperatorLink):
    """On a lifecycle run's fine_tune, evaluate and promote tasks: the MLflow run they trained and scored
    (found through Mongo ``training_runs``, which names the Airflow run). Other tasks: no link."""

    name = "MLflow run"
    TASKS = ("fine_tune", "evaluate", "promote")

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        run_id = _mlflow_run(ti_key) if ti_key.task_id in self.TASKS else None
        if not run_id:
            return ""
        from lifecycle import links
        from lifecycle.settings import load_settings

        return links.mlflow_run(load_settings(), run_id)


class MlflowVersionLink(BaseOperatorLink):
    """On a lifecycle run's promote task: the model version it registered."""

    name = "MLflow model version"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        run_id = _mlflow_run(ti_key) if ti_key.task_id == "promote" else None
        if not run_id:
            return ""
        from lifecycle import links, registry
        from lifecycle.settings import load_settings

        s = load_settings()
        found = registry.client(s.mlflow_tracking_uri).search_model_versions(f"run_id = '{run_id}'")
        return links.mlflow_version(s, found[0].name, found[0].version) if found else ""


def _mlflow_run(ti_key: Any) -> str | None:
    from lifecycle.settings import load_settings
    from lifecycle.store import TRAINING_RUNS, Store

    with Store.connect(load_settings()) as store:
        doc = store.db[TRAINING_RUNS].find_one({"airflow.dag_id": ti_key.dag_id, "airflow.run_id": ti_key.run_id},
                                               {"mlflow_run_id": 1}, sort=[("created_at", -1)])  # fmt: skip
    return str(doc["mlflow_run_id"]) if doc and doc.get("mlflow_run_id") else None


class LifecycleViewPlugin(AirflowPlugin):
    name = "lifecycle_view"
    fastapi_apps: ClassVar[list[Any]] = [{"app": app, "url_prefix": "/lifecycle", "name": "LLM lifecycle"}]
    external_views: ClassVar[list[Any]] = [{
        "name": "LLM lifecycle", "href": "/lifecycle/", "url_route": "llm-lifecycle", "destination": "nav",
        "nav_top_level": True,
    }]  # fmt: skip
    global_operator_extra_links: ClassVar[list[Any]] = [MlflowRunLink(), MlflowVersionLink()]
