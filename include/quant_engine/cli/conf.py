"""A command's ``--conf``-style flag: a JSON object of parameters, as a DAG's conf takes them."""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; a ``ValueError`` naming ``flag`` otherwise.

    Examples
    --------
    >>> json_object('{"chunk": 5}', "--conf")
    {'chunk': 5}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value
