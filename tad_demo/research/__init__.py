"""Research views: measurements on a base model and its concept vectors, for the command line and the app.

    lab.py         Lab: a base model, its concepts and CLIP, with one way to generate and score images
    sweep.py       CLIP score/accuracy of a concept and control concepts over a list of λ
    multi.py       ablate N concepts at once per merge method: what is erased, what is damaged
    analyze.py     cosines (global, per UNet block), norms, sparsity, sign agreement; analogy expressions
    adaptive.py    adaptive vector selection from a shared denoising prefix, and its ROC AUC
    batch_eval.py  a resumable, shardable table of concepts × λ × prompts × seeds
    ablate.py      make a concept-ablation checkpoint (Kumari et al.)
    plots.py       matplotlib helpers (no pyplot); report.py: plain-text tables and progress lines

Each view module holds its computation and a ``register(subparsers)`` that adds its ``python -m tad_demo
<command>``; registering imports no torch (the heavy modules load when a command runs). A Lab built from a world
folder (``Lab.from_world``) takes its concepts, vocabulary and prompt templates from that world's world.json.

Imports ``tad_demo.core`` and ``tad_demo.runtime`` only.
"""
