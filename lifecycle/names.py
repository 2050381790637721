"""Names that end up in paths or registry queries: checked once, the same way everywhere."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_valid_model_name(name: str) -> bool:
    """Letters, digits, '_', '-', '.'; no '..', no '/', never an absolute path."""
    return bool(_MODEL_NAME.match(name)) and ".." not in name


def split_model_ref(ref: str) -> tuple[str, str]:
    """``name``, ``name:alias`` or ``name@version`` -> (name, alias or version; "" for none).
    ValueError names what is wrong."""
    name, sep, which = ref, "", ""
    for mark in ("@", ":"):
        if mark in ref:
            name, sep, which = ref.partition(mark)
            break
    if not is_valid_model_name(name):
        raise ValueError(f"model name {name!r} is not allowed (letters, digits, '_', '-', '.')")
    if sep == "@" and not which.isdigit():
        raise ValueError(f"model {ref!r}: a version after '@' is a number, e.g. {name}@3")
    if sep == ":" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", which):
        raise ValueError(f"model {ref!r}: an alias after ':' is letters, digits, '_' or '-', e.g. {name}:champion")
    return name, which


#: gRPC trailing-metadata key with which a worker names the request field an INVALID_ARGUMENT is
#: about; the gateway answers it as the OpenAI error's ``param``.
PARAM_METADATA_KEY = "lifecycle-param"


def content_hash(messages: list[dict[str, Any]]) -> str:
    """A training record's identity: sha256 of its conversation, metadata excluded (equal content,
    equal hash). Ingest deduplicates by it, lineage names records by it, deletion finds them by it."""
    canon = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()
