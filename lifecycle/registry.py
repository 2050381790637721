"""MLflow model-registry helpers: versions, aliases and the digests recorded at registration."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
DIGEST_TAG_PREFIX = "sha256."


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def file_digests(folder: Path, suffixes: tuple[str, ...] = (".safetensors",)) -> dict[str, str]:
    """sha256 of every weight file under ``folder``, by path relative to it."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in suffixes:
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(path.relative_to(folder))] = h.hexdigest()
    return out


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


def version_digest(digests: dict[str, str]) -> str:
    """One sha256 naming a version's exact weights (over its files' digests, in path order)."""
    import json

    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def digests_of(version: Any) -> dict[str, str]:
    return {
        k.removeprefix(DIGEST_TAG_PREFIX): v for k, v in (version.tags or {}).items() if k.startswith(DIGEST_TAG_PREFIX)
    }
