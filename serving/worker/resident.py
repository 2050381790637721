"""What one worker keeps in memory: each base model once, and the versions it serves as LoRA adapters
on it (unmerged, see lora.py), the least recently used dropped beyond ``max_versions``.

A promotion of a version trained on the resident base costs a download of the adapter (a few MB), a
sha256 check of every recorded file and a read of its tensors: well under a second, where loading,
merging and warming a whole model took seconds. A version on another base (or an adapter kind that
cannot be served unmerged) loads that base beside the old one; a base no version uses any more is
dropped. Requests may name any version (``name@7``) or alias (``name:challenger``): loaded on demand.
"""

from __future__ import annotations

import collections
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from lifecycle.settings import Settings
from lifecycle.store import Store
from serving.worker import loader
from serving.worker.engine import Engine, ModelSlot, one_thread
from serving.worker.lora import LoraSet, servable_unmerged

log = logging.getLogger(__name__)
ALIAS_TTL_S = 5.0  # how long an alias -> version lookup is trusted for requests naming an alias


class Resident:
    def __init__(self, settings: Settings, engine: Engine, max_versions: int = 8) -> None:
        self.settings, self.engine, self.max_versions = settings, engine, max_versions
        self._bases: dict[str, tuple[Any, Any]] = {}  # base folder -> (model, tokenizer)
        self._slots: collections.OrderedDict[tuple[str, str], ModelSlot] = collections.OrderedDict()
        self._aliases: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()  # one load at a time; requests for loaded versions never wait on it
        self._store: Store | None = None  # the artifact records (Mongo), opened on the first registered load

    def loaded(self) -> list[ModelSlot]:
        return list(self._slots.values())

    def lookup(self, name: str, ref: str) -> ModelSlot | None:
        """A loaded slot for a version number or alias, without loading anything (None if not loaded)."""
        current = self.engine.current
        if current is not None and current.name == name and ref in ("", "champion", current.version):
            return current
        number = ref if ref.isdigit() else self._cached_alias(name, ref)
        return self._slots.get((name, number)) if number else None

    def _cached_alias(self, name: str, alias: str) -> str | None:
        hit = self._aliases.get((name, alias))
        return hit[1] if hit and time.monotonic() - hit[0] < ALIAS_TTL_S else None

    def resolve(self, name: str, ref: str) -> str:
        if ref.isdigit():
            return ref
        number = self._cached_alias(name, ref)
        if number is None:
            number = loader.resolve_version(self.settings, name, ref)
            if number is None:
                raise loader.LoadError(f"{name} has no version with alias {ref!r} in the registry")
            self._aliases[(name, ref)] = (time.monotonic(), number)
        return number

    def load(self, name: str, version: str = "champion", path: str = "") -> ModelSlot:
        """A warm slot for a registered version (number or alias) or, with ``path``, a local folder."""
        t0 = time.monotonic()
        loader.check_name(name)
        with one_thread(), self._lock:  # the engine thread keeps the cores (see engine.one_thread)
            if path:
                slot = self._local(name, version, path)
            else:
                number = self.resolve(name, version)
                slot = self._slots.get((name, number)) or self._registered(name, number)
            self._slots[(slot.name, slot.version)] = slot
            self._slots.move_to_end((slot.name, slot.version))
            self._evict(keep=slot)
        slot.load_seconds = time.monotonic() - t0
        return slot

    def _local(self, name: str, version: str, path: str) -> ModelSlot:
        folder = Path(path)
        if not (folder / "config.json").exists():
            raise loader.LoadError(f"{path}: not a Hugging Face model folder (no config.json)")
        model, tokenizer = self._base(str(folder), name)
        return ModelSlot(
            name, version if version.isdigit() else "local", model, tokenizer, loader.context_length(model)
        )

    def _registered(self, name: str, number: str) -> ModelSlot:
        t0 = time.monotonic()
        adapter, base, digest = loader.fetch_registered(self.settings, self._records(), name, number)
        try:
            if servable_unmerged(adapter):
                model, tokenizer = self._base(base, f"{name} v{number}")
                t1 = time.monotonic()
                slot = loader.attach_adapter(name, number, model, tokenizer, adapter, digest)
                log.info("%s v%s: adapter downloaded and verified in %.3fs, attached in %.3fs", name, number,
                         t1 - t0, time.monotonic() - t1)  # fmt: skip
                return slot
            s = self.settings  # merged into a model of its own
            slot = loader.build_slot(name, number, base, adapter, device=s.device, dtype=s.dtype)
            slot.digest = digest
            return slot
        finally:  # the tensors are in memory now; the download is not needed any more
            downloads = self.settings.serving_dir
            shutil.rmtree(downloads / adapter.relative_to(downloads).parts[0], ignore_errors=True)

    def _records(self) -> Store:
        """One Mongo client for the worker's life (not one, with its index checks, per version loaded)."""
        if self._store is None:
            try:
                self._store = Store.connect(self.settings)
            except PyMongoError as exc:
                raise loader.LoadError(f"artifact records (MongoDB) not reachable: {exc}") from None
        return self._store

    def _base(self, folder: str, what: str) -> tuple[Any, Any]:
        if folder not in self._bases:
            t0 = time.monotonic()
            model, tokenizer = loader.build_base(folder, self.settings.device, self.settings.dtype, what)
            loader.quantise(model, tokenizer, self.settings.serve_weights, what)
            loader.warm(ModelSlot(what, "base", model, tokenizer, loader.context_length(model)))
            self._bases[folder] = (model, tokenizer)
            log.info("%s: base %s resident after %.2fs", what, folder, time.monotonic() - t0)
        return self._bases[folder]

    def _evict(self, keep: ModelSlot) -> None:
        """Drop the least recently used versions beyond ``max_versions`` (never ``keep``, the current
        one or one with requests), then any base model no version uses."""
        current = self.engine.current
        for key in list(self._slots):
            if len(self._slots) <= self.max_versions:
                break
            slot = self._slots[key]
            if slot is keep or slot is current or self.engine.busy(slot):
                continue
            del self._slots[key]
            if slot.adapter:
                LoraSet.attach(slot.model).remove(slot.adapter)
            log.info("dropped %s v%s from memory (least recently used)", slot.name, slot.version)
        used = {id(s.model) for s in [*self._slots.values(), *([current] if current else [])]}
        for folder, (model, _) in list(self._bases.items()):
            if id(model) not in used:
                del self._bases[folder]
