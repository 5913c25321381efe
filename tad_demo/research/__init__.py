"""Research views (issue 5): sweep, multi-concept interference, vector analysis, adaptive selection, batch eval,
ablation. Each module holds the computation (used by the app's tabs) and a ``register(subparsers)`` that adds
its ``python -m tad_demo <command>``."""
