"""The UI edge: the one place where the app's errors become ``gr.Error`` (what Gradio shows in a toast and
returns to API clients).

    with shown("grid"):
        service.build(...)     # UserError("steps: 0 is outside 1..100") → gr.Error(..., title="Cannot run this")
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import gradio as gr

from ..errors import ServiceError, one_line

log = logging.getLogger("tad_demo.app.ui")


@contextlib.contextmanager
def shown(what: str) -> Iterator[None]:
    """The service's errors → ``gr.Error`` with their message and title; anything else (a bug in the UI glue) is
    logged and shown in one line, so the app keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except ServiceError as e:
        raise gr.Error(str(e), title=e.title) from None
    except Exception as e:  # noqa: BLE001 - the page must keep working
        log.exception("%s failed", what)
        raise gr.Error(one_line(f"{what} failed: {type(e).__name__}: {one_line(e)}"), title="Internal error") from None
