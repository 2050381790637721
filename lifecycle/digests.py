"""What a trained adapter is, byte for byte, and the one verified download of it.

At the end of training the launcher records the sha256 of **every file** of the adapter folder (weights,
``adapter_config.json``, tokenizer files, chat template) and the base model it was trained on, in Mongo
``artifact_digests`` keyed by the MLflow run (written once: a second, different record for a run is an
error). MLflow version tags still show the digests, but nothing trusts them: a tag edit in the registry
changes what the UI shows, not what loads.

Serving (the workers) and evaluation fetch a model through :func:`fetch`: download the logged model,
find its adapter folder, refuse pickles, missing, changed and unrecorded files, and take the base model
from the record (never from the downloaded ``MLmodel``). Nothing from the artifact store is executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.registry import DIGEST_TAG_PREFIX
from lifecycle.settings import Settings
from lifecycle.store import Store, now

log = logging.getLogger(__name__)
DIGESTS = "artifact_digests"
TAG_PREFIX = DIGEST_TAG_PREFIX  # the digests shown as run / version tags (display only)
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class DigestError(RuntimeError):
    """An artifact does not match its record (or has none); the message names the file."""


@dataclass(frozen=True)
class Recorded:
    run_id: str
    files: dict[str, str]  # path relative to the adapter folder -> sha256
    base_model: str

    @property
    def digest(self) -> str:
        return version_digest(self.files)


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it (POSIX separators)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[path.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def version_digest(files: dict[str, str]) -> str:
    """One sha256 naming a version's exact files (over their digests, in path order)."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def record(store: Store, run_id: str, folder: Path, base_model: str, legacy: bool = False) -> Recorded:
    """Record ``folder``'s files for ``run_id`` (once). Recording the same files again is a no-op;
    different files for a run that has a record raise ``DigestError``."""
    files = file_digests(folder)
    if not files:
        raise DigestError(f"{folder} has no files to record")
    # a list of documents: file names hold dots (not field names) and FerretDB refuses nested arrays
    listed = [{"path": k, "sha256": v} for k, v in sorted(files.items())]
    doc = {"_id": run_id, "files": listed, "base_model": base_model, "legacy": legacy, "created_at": now()}
    if not store.insert_once(DIGESTS, doc):
        existing = recorded(store, run_id)
        if existing is None or existing.files != files or existing.base_model != base_model:
            raise DigestError(f"run {run_id} already has a different artifact record; refusing to replace it")
    return Recorded(run_id, files, base_model)


def recorded(store: Store, run_id: str) -> Recorded | None:
    doc = store.get(DIGESTS, run_id)
    if doc is None:
        return None
    return Recorded(run_id, {str(f["path"]): str(f["sha256"]) for f in doc["files"]}, str(doc["base_model"]))


def verify(folder: Path, files: dict[str, str], what: str) -> None:
    """Every recorded file present with its sha256, no pickled weights and no file beside them."""
    if not folder.is_dir():
        raise DigestError(f"{what}: {folder} is missing")
    pickled = [p.name for p in folder.rglob("*") if p.suffix in PICKLES]
    if pickled:
        raise DigestError(f"{what}: pickled weight files are refused: {', '.join(sorted(pickled))}")
    actual = file_digests(folder)
    for rel, digest in files.items():
        if rel not in actual:
            raise DigestError(f"{what}: {rel} is missing")
        if actual[rel] != digest:
            raise DigestError(f"{what}: sha256 of {rel} is {actual[rel][:12]}…, recorded {digest[:12]}…")
    unexpected = set(actual) - set(files)
    if unexpected:
        raise DigestError(f"{what}: files not recorded at training: {', '.join(sorted(unexpected))}")


def legacy_tags(tags: dict[str, str] | None) -> dict[str, str]:
    """The ``sha256.*`` tags of a run or version, by file name."""
    return {k.removeprefix(TAG_PREFIX): v for k, v in (tags or {}).items() if k.startswith(TAG_PREFIX)}


def local_base(settings: Settings, base_model: str) -> str:
    """A base model named by hub id and pulled into the model cache is loaded from there."""
    cached = settings.models_dir / base_model.replace("/", "--")
    return str(cached) if not Path(base_model).is_dir() and cached.is_dir() else base_model


def fetch(
    settings: Settings, store: Store, source: str, run_id: str, dest: Path, what: str,
    legacy: dict[str, str] | None = None,
) -> tuple[Path, Recorded]:  # fmt: skip
    """Download the logged model ``source`` (of MLflow run ``run_id``) into ``dest`` and verify its
    adapter against the run's record: (adapter folder, the record).

    ``legacy``: the ``sha256.*`` tags of a version trained before records were kept (weights only).
    Such a version is loaded once if its weights match them, and its files are recorded then (trust on
    first use, logged, ``legacy: true`` in the record): an upgrade keeps serving its champion, and from
    then on every file of it is pinned."""
    import mlflow
    import yaml

    rec = recorded(store, run_id)
    if rec is None and not legacy:
        raise DigestError(f"{what}: run {run_id} has no artifact record in Mongo {DIGESTS!r}; refusing to load it")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest))).resolve()
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types for a missing artifact
        raise DigestError(f"{what}: cannot download {source}: {type(exc).__name__}: {exc}") from None
    meta: Any = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").exists() else None
    try:
        pyfunc = meta["flavors"]["python_function"]
        rel = pyfunc["artifacts"]["adapter"]["path"]
    except (KeyError, TypeError):
        raise DigestError(f"{what}: {source} has no readable MLmodel file naming its adapter") from None
    adapter = (local / str(rel)).resolve()
    if not adapter.is_relative_to(local):
        raise DigestError(f"{what}: MLmodel names an adapter outside the model ({rel})")
    if rec is None:
        assert legacy is not None
        verify_subset(file_digests(adapter), legacy, what)
        base = str((pyfunc.get("config") or {}).get("base_model") or settings.base_model)
        rec = record(store, run_id, adapter, base, legacy=True)
        log.warning("%s: trained before artifact records were kept; weights matched its sha256 tags, "
                    "every file recorded now (legacy)", what)  # fmt: skip
    verify(adapter, rec.files, what)
    return adapter, rec


def verify_subset(actual: dict[str, str], legacy: dict[str, str], what: str) -> None:
    """A legacy version: every file its tags name matches, and no weight file is untagged."""
    for name, digest in legacy.items():
        if name not in actual:
            raise DigestError(f"{what}: {name} is missing")
        if actual[name] != digest:
            raise DigestError(f"{what}: sha256 of {name} is {actual[name][:12]}…, registered {digest[:12]}…")
    untagged = sorted(k for k in actual if k.endswith(".safetensors") and k not in legacy)
    if untagged:
        raise DigestError(f"{what}: weight files not tagged at registration: {', '.join(untagged)}")
