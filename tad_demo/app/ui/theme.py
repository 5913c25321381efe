"""A projector-friendly look: large type, high contrast, the grid as big as the screen allows."""

from __future__ import annotations

import gradio as gr


def theme() -> gr.themes.Base:
    """Gradio's default theme with large text, strong borders and near-black text (projectors wash out greys)."""
    return gr.themes.Default(
        primary_hue=gr.themes.colors.blue, secondary_hue=gr.themes.colors.slate, neutral_hue=gr.themes.colors.gray,
        text_size=gr.themes.sizes.text_lg, spacing_size=gr.themes.sizes.spacing_md,
        radius_size=gr.themes.sizes.radius_sm,
    ).set(
        body_text_color="#0b0b0b", body_text_color_subdued="#2b2b2b", block_label_text_color="#0b0b0b",
        block_title_text_color="#0b0b0b", block_info_text_color="#2b2b2b", block_border_width="2px",
        input_border_width="2px", block_label_text_weight="700", block_title_text_weight="700",
        button_large_text_size="*text_xl", button_primary_background_fill="#1d4ed8",
        button_primary_text_color="#ffffff",
    )


CSS = """
/* the grid: as large as the viewport allows, never cropped */
.tad-grid img { object-fit: contain !important; }
/* high contrast tables and headings on a projector */
.tad-metrics table { font-size: 1.05rem; }
.tad-metrics th { background: #e5e7eb !important; color: #000 !important; font-weight: 700; }
.tad-title h1 { font-size: 2.1rem; margin: 0.2rem 0; }
.tad-status { font-size: 1.1rem; font-weight: 600; }
#metrics-note code { font-size: 1.05rem; color: #000; }
.tad-grid button[aria-label] { opacity: 0.85; }
.tad-run button, button.tad-run { font-size: 1.35rem !important; min-height: 3.2rem; }
"""
