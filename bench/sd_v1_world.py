"""An SD-1.x-shaped world on disk with random weights, in the real layouts: what the end-to-end test, the GPU check
and benchmarks run on when the real models cannot be downloaded.

    folder = build_sd_v1_world(Path("/tmp/sd1"))     # once; later calls with the same folder reuse it
    folder / "base"                # StableDiffusionPipeline folder (SD-1.4 configs of bench/sd_v1_configs, fp32)
    folder / "controlnet_canny"    # ControlNetModel folder (SD-1.5 ControlNet config; output blocks non-zero)
    folder / "clip"                # open_clip ViT-B-32-quickgelu folder (open_clip_config.json + weights)
    folder / "ablations/snoopy_delta_epoch=000004.ckpt"   # Kumari CompVis file: {'state_dict': {LDM k/v names}}
    folder / "ablations/van_gogh_delta.bin"               # Kumari diffusers file: {'unet': {diffusers k/v names}}
    folder / "catalog.yaml"        # an app catalog (TAD_CATALOG) offering all of it as base "sd-shaped"
    folder / "world.json"          # the same as a world folder (--assets / TAD_ASSETS): the research views run on it

The tokenizer is the real SD/OpenAI CLIP tokenizer, rebuilt offline from the BPE file open_clip ships. Weights are
seeded (``torch.manual_seed``), so two builds are equal; ``STAMP`` names what was built (configs + this recipe)
and a folder whose stamp differs is rebuilt. Run ``python bench/sd_v1_world.py DIR [--narrow]`` to build one by hand.

``narrow=True`` builds the suite's variant: SD-1.x's topology — every block, attention, parameter name and rank, the
768-wide text conditioning, the full-size text encoder, tokenizer and CLIP — with the UNet, ControlNet and VAE at a
tenth of their channel widths (``NARROW``). The full-size world is 6.3 GB and takes minutes to build and seconds
per UNet pass on 2 CPU cores; what the end-to-end test checks (layouts, key names, conversions, exact patching,
the service path) does not depend on widths. ``bench/gpu_check.py`` runs the full size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parent / "sd_v1_configs"
RECIPE_VERSION = "1"
# Channel widths of the narrow variant: a tenth of SD-1.x's (320, 640, 1280, 1280), kept divisible by the 32 norm
# groups; the VAE's (128, 256, 512, 512) likewise.
NARROW = {"unet": {"block_out_channels": [32, 64, 128, 128]},
          "controlnet": {"block_out_channels": [32, 64, 128, 128]},
          "vae": {"block_out_channels": [32, 64, 128, 128]}}
# Kumari checkpoints as the paper's eval.json names them: target → anchor, hard negatives.
OBJECT = ("snoopy", "dog", ("beagles", "basset hound", "harrier dog", "english foxhound"))
STYLE = ("van gogh", "painting", ("monet", "greg rutkowski", "salvador dali", "johannes vermeer", "jeremy mann"))
# The 16 cross-attention blocks of SD-1.x in LDM names (what Kumari's CompVis files hold), as the original
# ldm/openaimodel.py numbers them: input_blocks 1,2,4,5,7,8; middle_block; output_blocks 3..11.
LDM_ATTN_BLOCKS = ([f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block.1"] +
                   [f"output_blocks.{i}.1" for i in range(3, 12)])


def stamp(narrow: bool = False) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode() + (json.dumps(NARROW, sort_keys=True).encode() if narrow else b""))
    for f in sorted(CONFIGS.glob("*.json")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def write_clip_tokenizer(out: Path) -> Path:
    """SD's CLIPTokenizer files from open_clip's BPE: merges = lines 1..48894; vocab = byte symbols, the same with
    ``</w>``, each merge joined, then the two special tokens (49,408 ids)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer"}))
    return out


def _config(name: str, narrow: bool = False) -> dict:
    return {**json.loads((CONFIGS / f"{name}.json").read_text()), **(NARROW.get(name, {}) if narrow else {})}


def build_pipeline(out: Path, seed: int = 0, narrow: bool = False):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_config("unet", narrow))
    vae = AutoencoderKL.from_config(_config("vae", narrow))
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in _config("text_encoder").items() if k != "architectures"}))
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out.parent / "_tokenizer"))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                                   scheduler=PNDMScheduler.from_config(_config("scheduler")),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    shutil.rmtree(out.parent / "_tokenizer")
    return pipe


def build_controlnet(out: Path, seed: int = 1, narrow: bool = False) -> None:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_config(_config("controlnet", narrow))
    with torch.no_grad():  # a fresh ControlNet's zero convolutions have no effect; give them some
        for m in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            m.weight.normal_(0, 0.02)
    net.save_pretrained(out)


def build_clip(out: Path, seed: int = 2) -> None:
    """An open_clip ``local-dir`` folder of ViT-B-32-quickgelu (OpenAI's ViT-B/32 shape, random weights)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = open_clip.get_model_config("ViT-B-32-quickgelu")
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "size": 224, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def kv_names(unet_state: dict) -> list[str]:
    return [k for k in unet_state if ".attn2.to_k." in k or ".attn2.to_v." in k]


def build_ablations(out: Path, unet_state: dict[str, torch.Tensor], seed: int = 3) -> dict[str, Path]:
    """Kumari files of two fake fine-tunes: fine-tuned k/v weights (not differences), as their scripts save them."""
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    kv = kv_names(unet_state)
    assert len(kv) == 32, len(kv)

    def finetuned(key: str) -> torch.Tensor:
        w = unet_state[key]
        return (w + 0.5 * w.std() * torch.randn(w.shape, generator=g)).contiguous()

    # Kumari's CompVis get_deltas.py: {'state_dict': {'model.diffusion_model.<block>.…attn2.to_k.weight': …}}
    compvis = {}
    for block in LDM_ATTN_BLOCKS:
        for kv_name in ("to_k", "to_v"):
            ldm = f"model.diffusion_model.{block}.transformer_blocks.0.attn2.{kv_name}.weight"
            compvis[ldm] = finetuned(_diffusers_name(block, kv_name))
    files = _files(out.parent)
    torch.save({"state_dict": compvis}, files["object"])
    # Kumari's diffusers save_pretrained(parameter_group="cross-attn"): {'unet': {name: tensor}}
    torch.save({"unet": {k: finetuned(k) for k in kv}}, files["style"])
    return files


def _diffusers_name(block: str, kv: str) -> str:
    """LDM attention block → diffusers name (the DESIGN's table: two attentions per down block, three per up)."""
    kind, _, index = block.partition(".")
    i = int(index.split(".")[0])
    if kind == "middle_block":
        prefix = "mid_block.attentions.0"
    elif kind == "input_blocks":
        prefix = f"down_blocks.{(i - 1) // 3}.attentions.{(i - 1) % 3}"
    else:
        prefix = f"up_blocks.{i // 3}.attentions.{i % 3}"
    return f"{prefix}.transformer_blocks.0.attn2.{kv}.weight"


def write_catalog(root: Path, files: dict[str, Path]) -> Path:
    """An app catalog (``TAD_CATALOG``) that offers this world as the base ``sd-shaped`` of family sd-1."""
    import yaml

    cat = {
        "catalog": 1,
        "base_models": [{"id": "sd-shaped", "name": "SD-1.4-shaped, random weights", "hub": str(root / "base"),
                         "family": "sd-1", "defaults": {"steps": 2, "guidance": 6.0, "height": 64, "width": 64}}],
        "controlnets": {"sd-1": {"v1.1": {"canny": {"hub": str(root / "controlnet_canny")}}}},
        "clip": {"sd-1": {"spec": str(root / "clip")}},
        "concept_ablation": {"family": "sd-1", "concepts": [
            {"name": OBJECT[0], "kind": "object", "anchor": OBJECT[1], "checkpoint": str(files["object"]),
             "hard_negatives": list(OBJECT[2])},
            {"name": STYLE[0], "kind": "style", "anchor": STYLE[1], "checkpoint": str(files["style"]),
             "hard_negatives": list(STYLE[2])}]},
    }
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump(cat, sort_keys=False))
    return path


def write_world(root: Path, files: dict[str, Path]) -> Path:
    """``world.json`` (through the one writer, ``core.world.World``): the two concepts, a vocabulary with the anchors,
    hard negatives and never-ablated controls, SD-style prompt templates and tiny sampling defaults."""
    from tad_demo.core.world import Concept, World

    concepts = [Concept(name, kind, anchor, str(files[kind]), "ablation", hard)
                for kind, (name, anchor, hard) in (("object", OBJECT), ("style", STYLE))]
    world = World(root=root, concepts=concepts,
                  objects=[OBJECT[0], OBJECT[1], *OBJECT[2][:2], "cat", "robot"],
                  styles=[STYLE[0], STYLE[1], *STYLE[2][:2]], control_concepts=["cat", "robot"],
                  prompt_templates=["a {object} in {style} style", "a photo of a {object} in {style} style"],
                  defaults={"num_inference_steps": 2, "guidance_scale": 6.0, "height": 64, "width": 64},
                  base="base", clip="clip", controlnets={"canny": "controlnet_canny"})
    return world.save()


def _files(root: Path) -> dict[str, Path]:
    return {"object": root / "ablations" / "snoopy_delta_epoch=000004.ckpt",
            "style": root / "ablations" / "van_gogh_delta.bin"}


def build_sd_v1_world(root: Path, narrow: bool = False) -> Path:
    """Build (or reuse, when its stamp matches) the SD-1.x-shaped world in ``root`` (``narrow``: see above)."""
    root = Path(root)
    if (root / "STAMP").is_file() and (root / "STAMP").read_text() == stamp(narrow):
        write_catalog(root, _files(root))  # cheap, so always current
        write_world(root, _files(root))
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pipe = build_pipeline(root / "base", narrow=narrow)
    files = build_ablations(root / "ablations", pipe.unet.state_dict())
    del pipe
    build_controlnet(root / "controlnet_canny", narrow=narrow)
    build_clip(root / "clip")
    write_catalog(root, files)
    write_world(root, files)
    (root / "STAMP").write_text(stamp(narrow))
    return root


if __name__ == "__main__":
    sys.path.insert(0, str(CONFIGS.parents[1]))  # run as a script: the repository's tad_demo
    args = [a for a in sys.argv[1:] if a != "--narrow"]
    print(build_sd_v1_world(Path(args[0] if args else "sd_v1_world"), narrow="--narrow" in sys.argv))
