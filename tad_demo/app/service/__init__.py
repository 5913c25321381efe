"""The grid service (see service.py): the one object the app's UI talks to for concept grids."""

from ..request import REQUEST_FIELDS, GridRequest
from .outputs import metrics_note, summary_table
from .runs import new_run_dir, request_key
from .service import Service

__all__ = ["REQUEST_FIELDS", "GridRequest", "Service", "metrics_note", "new_run_dir", "request_key",
           "summary_table"]
