"""Names that end up in paths or registry queries: checked once, the same way everywhere."""

from __future__ import annotations

import re

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_valid_model_name(name: str) -> bool:
    """Letters, digits, '_', '-', '.'; no '..', no '/', never an absolute path."""
    return bool(_MODEL_NAME.match(name)) and ".." not in name


#: gRPC trailing-metadata key with which a worker names the request field an INVALID_ARGUMENT is
#: about; the gateway answers it as the OpenAI error's ``param``.
PARAM_METADATA_KEY = "lifecycle-param"
