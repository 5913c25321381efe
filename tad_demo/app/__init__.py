"""The Gradio app: its settings, what it offers, the services that validate and run requests, and the UI.

    settings.py           Settings from environment variables (caps from core/limits.py)
    errors.py             the app's own errors (UserError, RunCancelled, InternalError): one line, for a person
    validation.py         checking values from people (numbers, seeds, λ lists, names, text) → UserError
    request.py            GridRequest: the contract between the UI and the grid service
    catalog.py            the app's world and the real models of assets/catalog.yaml
    service/              the grid service (choices, sources, build, conditions, runs, examples, outputs, recipes)
    research_service.py   the research views for the app, on the grid service's model cache
    precompute.py         `python -m tad_demo.app.precompute`: the examples' results, ahead of time
    ui/                   Blocks and handlers; the only place that turns service errors into gr.Error

``app.py`` at the repository root composes them: settings → service → ui.create_demo(service) → launch.
``app/ui`` imports only ``app/request.py`` and ``app/errors.py`` of the package: no torch, no library.
"""
