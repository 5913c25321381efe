"""The library's core: task arithmetic on model weights, with no pipelines, no UI and no world of its own.

    errors.py        every library error (TadError and its subclasses)
    limits.py        the one table of limits (hard bounds of any caller, the app's caps)
    checkpoints/     any checkpoint file or folder → a state dict with canonical diffusers keys
    task_vector.py   TaskVector: τ = θ_finetuned − θ_base and its algebra
    lora.py          LoRA files → dense TaskVectors
    merge_methods.py named merge methods (linear, TIES, DARE, median, top-p) and their parameter specs
    diagnostics.py   measures of task vectors (norms, cosines per block, sign agreement, random baseline)
    patching.py      WeightPatcher: exact hot patching of a live model's weights
    recipe.py        recipes: a YAML description of an edited model and the hashes of its inputs
    world.py         Concept and World: the one reader/writer of a world folder's world.json

Nothing in here imports ``tad_demo.runtime``, ``grid``, ``research``, ``app`` or ``toyworld`` (import-linter checks it).
"""
