"""Share links: a run's values as a query string, and a query string back into request field values — send the
URL, and the other person's page fills in and runs the same grid (same seeds, so the same images).

    query = share_query(history.fields(run_id))     # "object_lambdas=1%2C+0%2C+-1&seeds=42&…"
    fields_from_query({"seeds": "42", "steps": "20"})  # {"seeds": "42", "steps": 20}

Only the fields an example can set travel (no uploads, no drawings); values from a URL are then checked by the
grid's own validation like any other input (a bad one is refused with the field named, when the grid runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from ..request import EXAMPLE_FIELDS, request_defaults

MAX_VALUE = 1000  # characters of one query value
INTEGERS = ("steps", "height", "width")
NUMBERS = ("guidance",)  # numeric fields whose default is None ("the base's default")


def share_query(fields: Mapping[str, Any]) -> str:
    """The query string of a run's field values (lists comma-separated, booleans 1/0)."""
    out = {}
    for k in EXAMPLE_FIELDS:
        if k not in fields or fields[k] is None:
            continue
        v = fields[k]
        out[k] = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else (
            ("1" if v else "0") if isinstance(v, bool) else str(v))
    return urlencode(out)


def fields_from_query(params: Mapping[str, str]) -> dict[str, Any]:
    """Request field values from a share link's query parameters: known fields only, each value typed like the
    field's default where it parses (else left as text, for the validation to refuse with its name)."""
    defaults = request_defaults()
    out: dict[str, Any] = {}
    for k in EXAMPLE_FIELDS:
        if k not in params:
            continue
        raw = str(params[k])[:MAX_VALUE]
        d = defaults[k]
        if isinstance(d, bool):
            out[k] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(d, list):
            out[k] = [x.strip() for x in raw.split(",") if x.strip()]
        elif k in INTEGERS or k in NUMBERS or isinstance(d, (int, float)):
            out[k] = _number(raw, integer=k in INTEGERS)
        else:
            out[k] = raw
    return out


def _number(raw: str, integer: bool) -> Any:
    try:
        v = float(raw)
    except ValueError:
        return raw
    return int(v) if integer and v.is_integer() else v


__all__ = ["fields_from_query", "share_query"]
