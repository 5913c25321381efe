"""Library errors → the app's own errors, in one place (every public service method runs under ``guard``).

    with guard("grid"):
        run_grid(...)      # GridError → UserError(its message); Cancelled → RunCancelled; a bug → InternalError
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from ...core.errors import Cancelled, TadError
from ..errors import InternalError, RunCancelled, ServiceError, UserError

log = logging.getLogger("tad_demo.app")

# Refusals the user can act on: every library error, and a file that is not there.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (TadError, FileNotFoundError)
# An absolute path in a library's message: only its last part is shown (the server's folders are nobody's business).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`()<>:;,/\\]+[/\\])+(?=[^\s'\"`()<>:;,/\\])")


def redact(message: object) -> str:
    """The message with every absolute path shortened to its file name (``…/name.ckpt``)."""
    return _ABSOLUTE_PATH.sub("…/", str(message))


@contextlib.contextmanager
def guard(what: str, *, name_it: bool = False,
          refusals: tuple[type[BaseException], ...] = LIBRARY_ERRORS) -> Iterator[None]:
    """``refusals`` (default: library errors) → :class:`UserError` with their message (prefixed with ``what`` when
    ``name_it``); a cancelled run → :class:`RunCancelled`; anything else is logged and becomes an
    :class:`InternalError` naming ``what``, so the app keeps serving. The app's own errors pass through."""
    try:
        yield
    except ServiceError:
        raise
    except Cancelled as e:
        raise RunCancelled(e) from None
    except refusals as e:
        log.info("%s refused: %s: %s", what, type(e).__name__, e)
        raise UserError(redact(f"{what}: {e}" if name_it else e)) from None
    except Exception as e:  # noqa: BLE001 - the app must keep serving whatever a model library raises
        log.exception("%s failed", what)
        text = str(e).strip().splitlines()
        raise InternalError(redact(f"{what} failed: {type(e).__name__}: {text[0] if text else ''}")) from None
