"""The app's own errors: what its services raise, one line each, for a person to read.

The UI edge (``tad_demo/app/ui/edge.py``) is the only place that turns them into ``gr.Error``; the command line
prints them (``UserError`` is a ``ValueError``). ``title`` is the heading the UI shows above the message.

    ServiceError
    ├── UserError       the request cannot run as given (a bad value, a refused path, a library refusal)
    ├── RunCancelled    the user pressed Cancel; the model's weights are back at the base
    └── InternalError   something unexpected failed (logged with its traceback); the app keeps serving
"""

from __future__ import annotations

MAX_MESSAGE = 500


def one_line(message: object) -> str:
    """The first line of a message, at most MAX_MESSAGE characters."""
    lines = str(message).strip().splitlines()
    return (lines[0] if lines else "")[:MAX_MESSAGE]


class ServiceError(Exception):
    """Base of the app's errors: a one-line message and the title the UI shows with it."""

    title = "Error"

    def __init__(self, message: object):
        super().__init__(one_line(message))


class UserError(ServiceError, ValueError):
    title = "Cannot run this"


class RunCancelled(ServiceError):
    title = "Cancelled"


class InternalError(ServiceError):
    title = "Internal error"


__all__ = ["InternalError", "RunCancelled", "ServiceError", "UserError", "one_line"]
