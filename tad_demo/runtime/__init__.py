"""The runtime: models loaded and run.

    models.py     Models: one cache per process of the base pipeline, ControlNet pipelines, patcher, CLIP, vectors
    pipelines.py  building diffusers pipelines from references; saving an edited model with its recipe
    sampling.py   batched, reproducible sampling (same seed ⇒ same image, whatever the batch)
    fast_unet.py  a bit-exact traced UNet forward for small UNets on CPU
    metrics.py    CLIP score and CLIP accuracy (Kumari et al.'s definitions)
    control.py    ControlNet conditions: annotators, sketches, resizing, a world's example maps
    ablation.py   the concept-ablation objective (Kumari et al.) that makes ablation checkpoints

Imports ``tad_demo.core`` only.
"""
