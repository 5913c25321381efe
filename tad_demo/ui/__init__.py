"""Gradio UI of the TAD Concept Grid: Blocks builders and event handlers. No torch import here (checked by a test):
everything heavy goes through the service object passed to :func:`create_demo`."""

from __future__ import annotations

from .demo import create_demo, launch_options
from .theme import CSS, theme

__all__ = ["CSS", "create_demo", "launch_options", "theme"]
