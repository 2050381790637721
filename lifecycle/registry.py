"""MLflow model-registry helpers: versions and aliases (what a version's files are: lifecycle/digests.py)."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
DIGEST_TAG_PREFIX = "sha256."


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_by_alias(mc: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return mc.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def version_for_run(mc: MlflowClient, name: str, run_id: str) -> Any | None:
    """The registered version made from ``run_id``, if any (registration is idempotent by run)."""
    try:
        found = mc.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def register(mc: MlflowClient, name: str, source: str, run_id: str, tags: dict[str, str]) -> tuple[Any, bool]:
    """Register ``source`` as a version of ``name`` unless this run already has one. (version, created)"""
    existing = version_for_run(mc, name, run_id)
    if existing is not None:
        return existing, False
    try:
        mc.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # MLflow 3 logged models ("models:/m-…") are registered by their model id.
    model_id = source.removeprefix("models:/") if source.startswith("models:/m-") else None
    version = mc.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
    return version, True
