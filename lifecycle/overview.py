"""The platform at a glance, for the "LLM lifecycle" page in the Airflow UI (``plugins/lifecycle_view.py``):
each model's champion and challenger with the evaluation that put them there, the recent training runs
and rollouts, every item with its MLflow and Airflow addresses (``lifecycle/links.py``)."""

from __future__ import annotations

from typing import Any

from lifecycle import links, registry
from lifecycle.settings import Settings
from lifecycle.store import EVALUATIONS, ROLLOUTS, TRAINING_RUNS, Store


def _version(settings: Settings, mc: Any, name: str, version: Any) -> dict[str, Any]:
    return {
        "version": int(version.version),
        "run_id": version.run_id,
        "description": version.description or "",
        "decision": (version.tags or {}).get("lifecycle.decision", ""),
        "tainted": (version.tags or {}).get("lifecycle.tainted", ""),
        "mlflow_url": links.mlflow_version(settings, name, version.version),
        "run_url": links.mlflow_run(settings, version.run_id) if version.run_id else "",
    }


def models(settings: Settings, limit: int = 6) -> list[dict[str, Any]]:
    """Registered models with a champion or a challenger, the settings' model first, then the most
    recently updated; each with both aliases' versions."""
    mc = registry.client(settings.mlflow_tracking_uri)
    found = mc.search_registered_models(max_results=200, order_by=["last_updated_timestamp DESC"])
    ordered = sorted(found, key=lambda m: m.name != settings.model_name)
    out = []
    for m in ordered:
        aliases = dict(m.aliases or {})
        if not ({registry.CHAMPION, registry.CHALLENGER} & set(aliases)):
            continue
        entry: dict[str, Any] = {"name": m.name}
        if aliases.get(registry.CHALLENGER) == aliases.get(registry.CHAMPION):
            aliases.pop(registry.CHALLENGER)  # a challenger that became champion keeps the alias until the next
        for alias in (registry.CHAMPION, registry.CHALLENGER):
            if alias in aliases:
                entry[alias] = _version(settings, mc, m.name, mc.get_model_version(m.name, aliases[alias]))
        out.append(entry)
        if len(out) >= limit:
            break
    return out


def training_runs(settings: Settings, store: Store, limit: int = 15) -> list[dict[str, Any]]:
    docs = store.db[TRAINING_RUNS].find({}, {"config": 0}).sort("created_at", -1).limit(limit)
    out = []
    for d in docs:
        airflow = d.get("airflow") or {}
        out.append({
            "run_id": d["_id"], "status": d.get("status"), "dataset_id": d.get("dataset_id"),
            "created_at": str(d.get("created_at", ""))[:19], "final_loss": (d.get("metrics") or {}).get("final_loss"),
            "mlflow_url": links.mlflow_run(settings, d["mlflow_run_id"]) if d.get("mlflow_run_id") else "",
            "airflow": f"{airflow.get('dag_id')} / {airflow.get('run_id')}" if airflow.get("run_id") else "",
            "airflow_url": links.airflow_run(settings, airflow["dag_id"], airflow["run_id"])
            if airflow.get("run_id") and airflow.get("dag_id") else "",
        })  # fmt: skip
    return out


def rollouts(settings: Settings, store: Store, limit: int = 10) -> list[dict[str, Any]]:
    docs = store.db[ROLLOUTS].find({}, {"decisions": 0}).sort("started_at", -1).limit(limit)
    return [{
        "id": d["_id"], "model": d["model_name"], "version": d["version"], "champion": d["champion"],
        "policy": d["policy"], "state": "paused" if d.get("paused") and d["state"] == "running" else d["state"],
        "stage": d["stages"][d["stage"]]["kind"], "share": d["stages"][d["stage"]]["share"],
        "mlflow_url": links.mlflow_version(settings, d["model_name"], d["version"]),
    } for d in docs]  # fmt: skip


def evaluation_of(store: Store, mlflow_run_id: str) -> dict[str, Any] | None:
    """The newest evaluation of a candidate run (its scores and the gate's preview)."""
    doc = store.db[EVALUATIONS].find_one({"candidate.run_id": mlflow_run_id}, sort=[("created_at", -1)])
    return None if doc is None else {k: doc.get(k) for k in ("dataset_id", "items", "baseline", "candidate", "preview")}


def summary(settings: Settings, store: Store) -> dict[str, Any]:
    found = models(settings)
    for m in found:
        for alias in (registry.CHAMPION, registry.CHALLENGER):
            if alias in m and m[alias]["run_id"]:
                m[alias]["evaluation"] = evaluation_of(store, m[alias]["run_id"])
    return {
        "models": found,
        "training_runs": training_runs(settings, store),
        "rollouts": rollouts(settings, store),
        "mlflow": links.mlflow_base(settings),
    }
