"""Gradio UI of the TAD Concept Grid: Blocks builders (demo.py, research.py), event handlers (handlers.py), the
projector theme (theme.py) and the error edge (edge.py).

No torch and no library here (import-linter's contracts in pyproject.toml and tests check it): everything heavy
goes through the service objects passed to :func:`create_demo`; of the app, only ``request.py`` (the GridRequest
fields) and ``errors.py`` (what the services raise) are imported.
"""

from __future__ import annotations

from .demo import create_demo, launch_options
from .theme import CSS, theme

__all__ = ["CSS", "create_demo", "launch_options", "theme"]
