"""Input components whose values reach the handlers as sent, so that the service's validation — not a widget —
judges them and names the field.

Gradio's own ``Number``/``Slider`` check bounds and convert in ``preprocess``: a non-number or NaN sent to the API
then fails inside Gradio with a generic message ("… verbose error reporting", ``{"error": null}``), and a range
error does not say which field. The widgets here are Gradio's (same frontend), with their ``preprocess`` replaced
on the instance: numbers pass on unconverted (``app/validation.py`` checks them), and so do choices (Gradio checks
them against the choices the page was built with, so an API call for another base's concepts would be refused
before the service sees it); an image that PIL cannot read is refused in one line naming the widget. (Instances,
not subclasses: Gradio writes a ``.pyi`` file next to the module of every component subclass.)
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def _as_sent(payload: Any) -> Any:
    return payload


def _unconverted(widget: Any) -> Any:
    widget.preprocess = _as_sent
    return widget


def Number(*args: Any, **kwargs: Any) -> gr.Number:  # noqa: N802 - reads like the component it makes
    """A ``gr.Number`` whose value is passed on unconverted."""
    return _unconverted(gr.Number(*args, **kwargs))


def Slider(*args: Any, **kwargs: Any) -> gr.Slider:  # noqa: N802
    """A ``gr.Slider`` whose value is passed on unconverted."""
    return _unconverted(gr.Slider(*args, **kwargs))


def Dropdown(*args: Any, **kwargs: Any) -> gr.Dropdown:  # noqa: N802
    """A ``gr.Dropdown`` whose value is passed on as sent (the service checks it against the current choices)."""
    return _unconverted(gr.Dropdown(*args, **kwargs))


def CheckboxGroup(*args: Any, **kwargs: Any) -> gr.CheckboxGroup:  # noqa: N802
    """A ``gr.CheckboxGroup`` whose values are passed on as sent (the service checks them)."""
    return _unconverted(gr.CheckboxGroup(*args, **kwargs))


def Image(*args: Any, **kwargs: Any) -> gr.Image:  # noqa: N802
    """A ``gr.Image`` that refuses a file that is not an image in one line naming the widget."""
    w = gr.Image(*args, **kwargs)
    preprocess = w.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds of errors for a bad file
            raise gr.Error(f"{w.label or 'image'}: the upload is not an image PIL can read ({type(e).__name__}); "
                           "upload a PNG or JPEG", title="Cannot run this") from None

    w.preprocess = checked  # type: ignore[method-assign]
    return w


__all__ = ["CheckboxGroup", "Dropdown", "Image", "Number", "Slider"]
