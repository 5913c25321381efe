"""CLIP score and CLIP accuracy with the definitions of Kumari et al.'s concept-ablation ``evaluate.py``.

* text of a concept: the **bare concept string** ("snoopy", "dog", "monet", "painting": their ``eval.json``;
  their caption dataset's prefix is empty). CLIPScore's prefix "A photo depicts " (Hessel et al.) is an option
  (``ClipScorer.prefix``, ``--clip-prefix``), not the default;
* CLIP score of an image for a concept: ``2.5 · max(cos(image, text), 0)`` (CLIPScore's scale), averaged over
  images;
* CLIP accuracy of a target against its anchor: the share of images whose score for the target text is higher
  than for the anchor text (hard negatives are scored the same way).

Works with any open_clip model: the toy world's CLIP (``local-dir:assets/toyworld/clip`` or the folder path),
OpenAI's ViT-B/32 (``ViT-B-32-quickgelu/openai``, when its weights are in the local cache) or a weights file
(``ViT-B-32-quickgelu:/path/to/open_clip_model.safetensors``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import ClipUnavailable
from .loading import LOADING

log = logging.getLogger(__name__)

CLIPSCORE_PREFIX = "A photo depicts "  # Hessel et al.'s CLIPScore prefix: an option, not Kumari's default
SCORE_SCALE = 2.5
FORMULA = ("CLIP score = 2.5·max(cos(image, '<concept>'), 0) with the bare concept string; "
           "accuracy = P(score target > score anchor)")


def concept_caption(concept: str, kind: str = "object", prefix: str = "") -> str:
    """The evaluation text of a concept: the bare string (Kumari ``evaluate.py``), optionally prefixed.

    ``kind`` is accepted for symmetry with the callers and does not change the text: Kumari's style concepts
    ("monet", "painting") are bare strings too."""
    del kind
    return f"{prefix}{concept}"


@dataclass
class ClipScorer:
    """An open_clip model with its preprocessing and tokenizer; text features are cached per caption."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    name: str
    batch_size: int = 64
    prefix: str = ""  # "" (Kumari et al.) or CLIPSCORE_PREFIX (Hessel et al.)
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, spec: str | Path, prefix: str = "") -> ClipScorer:
        """Load from a folder (open_clip ``local-dir`` layout), ``NAME/PRETRAINED_TAG`` or ``NAME:WEIGHTS_FILE``;
        ``prefix`` goes in front of every concept string (default none, as Kumari et al.)."""
        with LOADING:  # one load at a time in a process (see loading.py)
            return cls._load(str(spec), prefix)

    @classmethod
    def _load(cls, spec_s: str, prefix: str) -> ClipScorer:
        import open_clip

        if spec_s.startswith("local-dir:") or Path(spec_s).is_dir():
            folder = spec_s.removeprefix("local-dir:")
            if not (Path(folder) / "open_clip_config.json").is_file():
                raise ClipUnavailable(f"{folder}: not an open_clip model folder (no open_clip_config.json)")
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        elif ":" in spec_s:
            name, weights = spec_s.split(":", 1)
            if not Path(weights).is_file():
                raise ClipUnavailable(f"CLIP weights file {weights!r} not found")
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
            tokenizer = open_clip.get_tokenizer(name)
        else:
            name, _, tag = spec_s.partition("/")
            if not tag:
                raise ClipUnavailable(f"CLIP spec {spec_s!r}: use a folder, NAME/PRETRAINED (e.g. "
                                      "ViT-B-32-quickgelu/openai) or NAME:/path/to/weights")
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
            except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/OSError/HF errors offline
                raise ClipUnavailable(
                    f"CLIP {name}/{tag} weights are not available here ({type(e).__name__}); on a machine with "
                    f"internet run `python -c \"import open_clip; open_clip.create_model_and_transforms('{name}', "
                    f"pretrained='{tag}')\"` to fill the Hugging Face cache, or pass {name}:/path/to/weights"
                ) from None
            tokenizer = open_clip.get_tokenizer(name)
        model.eval().requires_grad_(False)
        return cls(model=model, preprocess=preprocess, tokenizer=tokenizer, name=spec_s, prefix=prefix)

    # --- features ------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        feats = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + self.batch_size]])
            feats.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(feats) if feats else torch.empty(0)

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        todo = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if todo:
            f = torch.nn.functional.normalize(self.model.encode_text(self.tokenizer(todo)).float(), dim=-1)
            self._text_cache.update(zip(todo, f))
        return torch.stack([self._text_cache[c] for c in captions])

    # --- metrics -------------------------------------------------------------------------------------
    def scores(self, images: Sequence[Image.Image] | torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """``2.5·max(cos, 0)`` for every (image, caption): an N_images × N_captions tensor."""
        feats = images if isinstance(images, torch.Tensor) else self.image_features(images)
        return SCORE_SCALE * (feats @ self.text_features(captions).T).clamp(min=0)

    def caption(self, concept: str, kind: str = "object") -> str:
        """The text this scorer uses for a concept (bare, or with its prefix)."""
        return concept_caption(concept, kind, self.prefix)

    def clip_score(self, images, concept: str, kind: str = "object") -> float:
        return float(self.scores(images, [self.caption(concept, kind)]).mean())

    def clip_accuracy(self, images, target: str, anchor: str, kind: str = "object") -> float:
        s = self.scores(images, [self.caption(target, kind), self.caption(anchor, kind)])
        return float((s[:, 0] > s[:, 1]).float().mean())

    def per_image(self, images, target: str, anchor: str, kind: str = "object") -> list[tuple[float, bool]]:
        """(score of the target text, target beats anchor) for each image: what a grid cell shows."""
        s = self.scores(images, [self.caption(target, kind), self.caption(anchor, kind)])
        return [(float(a), bool(a > b)) for a, b in s.tolist()]

    def classify(self, images, labels: Sequence[str], kind: str = "object") -> list[str]:
        """Zero-shot: the label whose text scores highest (raw cosine, before clamping)."""
        feats = images if isinstance(images, torch.Tensor) else self.image_features(images)
        sims = feats @ self.text_features([self.caption(x, kind) for x in labels]).T
        return [labels[i] for i in sims.argmax(1).tolist()]
