"""TAD Concept Grid — `python app.py` serves the toy world on http://127.0.0.1:7860 with no download.

Composition root: settings (env vars, see tad_demo/app/settings.py) → service (validation, models, runs) →
UI (tad_demo/app/ui) → one queue → launch. Hugging Face Spaces runs this file as is (SPACE_ID ⇒ hosted mode).
"""

from __future__ import annotations

import logging

import gradio as gr

from tad_demo.app import ui
from tad_demo.app.research_service import ResearchService
from tad_demo.app.service import Service
from tad_demo.app.settings import Settings

log = logging.getLogger("app")


def build(settings: Settings) -> tuple[Service, gr.Blocks]:
    """The service (one model cache per process), the research views on the same cache, and the Blocks wired to
    them, with its queue."""
    service = Service(settings)
    demo = ui.create_demo(service, research=ResearchService(service))
    # One queue for every heavy event; they share concurrency_id="gpu" with a limit of 1 (see tad_demo/app/ui/demo.py).
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    if settings.warm_start:  # the default base loads and traces while the page is served (TAD_WARM_START=0: not)
        service.start_warm_up()
    return service, demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    log.info("settings: %s", settings.describe())
    _, demo = build(settings)
    demo.launch(**ui.launch_options(settings))


if __name__ == "__main__":
    main()
