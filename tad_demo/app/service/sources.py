"""Model references a person gives the app, checked before anything is read: local paths, Hub ids, uploads.

A model reference is a catalog id, the app's world, a Hub id, an upload, or (local runs only) a path inside
``Settings.model_dirs``; ``..`` in a path and URLs are refused; pickle files (.ckpt/.bin/.pt/.pth) are refused
when hosted (unpickling can run code). Hub ids of checkpoints are downloaded when a grid runs (``materialize``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...grid import GridSpec
from ..errors import UserError
from ..settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}(/[\w.\-/]{1,200})?")
NAME = re.compile(r"[^\W\d_][\w '.-]{0,59}")  # concept words go into prompts and CLIP captions
CUSTOM = re.compile(r"\s*(?P<name>[^@]+?)\s*(?:→|->)\s*(?P<anchor>[^@]+?)\s*@\s*(?P<source>.+?)\s*")


def short(ref: Any, n: int = 48) -> str:
    """A long path or id shortened from the left, for labels."""
    ref = str(ref)
    return ref if len(ref) <= n else "…" + ref[-(n - 1):]


class Sources:
    """Checks model references against the settings (hosted or local, allowed folders)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def allowed_roots(self) -> list[Path]:
        """Folders local paths may point into: the app's assets and uploads always, model_dirs on local runs."""
        from gradio.utils import get_upload_folder

        roots = [self.settings.assets, Path(get_upload_folder()), self.settings.work_dir]
        if not self.settings.hosted:
            roots += list(self.settings.model_dirs)
        return [r.expanduser().resolve() for r in roots]

    def check(self, ref: Any, what: str, *, folder_ok: bool = True) -> str:
        """A checked model reference: an existing local path (inside the allowed roots) or a Hub id."""
        if not isinstance(ref, str) or not ref.strip():
            raise UserError(f"{what}: give a Hub id (owner/name), an upload" +
                            ("" if self.settings.hosted else " or a local path"))
        ref = ref.strip()
        if len(ref) > 500:
            raise UserError(f"{what}: the reference is {len(ref)} characters long; that is not a model id or path")
        if "://" in ref or ref.lower().startswith(("http:", "https:", "file:", "ftp:")):
            raise UserError(f"{what}: URLs are not fetched by this app; " + (
                "give a Hub id (owner/name) or upload a .safetensors file" if self.settings.hosted else
                "download the file and give its path, or give a Hub id (owner/name)"))
        p = Path(ref).expanduser()
        if ".." in p.parts:
            raise UserError(f"{what}: {ref!r} contains '..' (path traversal is not allowed); give a path inside "
                            "the allowed folders, a Hub id or an upload")
        # "models/snoopy.ckpt" is a local file, not a Hub repo named "snoopy.ckpt".
        looks_like_file = p.suffix.lower() in CHECKPOINT_SUFFIXES and ref.count("/") == 1
        if p.is_absolute() or ref.startswith(("~", "./")) or p.exists() or looks_like_file:
            return self._check_local(ref, p, what, folder_ok)
        if HUB_ID.fullmatch(ref):
            if ref.count("/") > 1:
                self.check_pickle(ref, what)
            return ref
        raise UserError(f"{what}: {ref!r} is neither an existing path nor a Hub id (owner/name)")

    def _check_local(self, ref: str, p: Path, what: str, folder_ok: bool) -> str:
        resolved = p.resolve()
        if not any(resolved == r or r in resolved.parents for r in self.allowed_roots()):
            if self.settings.hosted:
                raise UserError(f"{what}: local paths are disabled on this hosted app; give a Hub id "
                                "(owner/name) or upload a .safetensors file")
            dirs = ", ".join(str(d) for d in self.settings.model_dirs) or "none"
            raise UserError(f"{what}: {ref!r} is outside the folders models may be read from ({dirs}); "
                            "set TAD_MODEL_DIRS to allow another folder")
        if not resolved.exists():
            raise UserError(f"{what}: {ref!r} not found")
        if resolved.is_dir():
            if not folder_ok:
                raise UserError(f"{what}: {ref!r} is a folder; give a checkpoint file")
        elif resolved.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UserError(f"{what}: {ref!r} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a "
                            "diffusers folder")
        self.check_pickle(resolved.name, what)
        return str(p)

    def check_pickle(self, name: str, what: str) -> None:
        if self.settings.hosted and name.lower().endswith(PICKLE_SUFFIXES):
            raise UserError(f"{what}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run code when loaded and "
                            "are refused on this hosted app; convert it with `python -m tad_demo convert` and upload "
                            "the .safetensors")

    def custom_concept(self, name: str, anchor: str, source: str, what: str = "concept") -> str:
        """The dropdown value of a user's checkpoint: ``target → anchor @ source`` (checked)."""
        name, anchor = (name or "").strip(), (anchor or "").strip()
        for label, word in (("target", name), ("anchor", anchor)):
            if not NAME.fullmatch(word or ""):
                raise UserError(f"{what}: the {label} word {word!r} must be 1–60 letters/digits/spaces, starting "
                                "with a letter (it goes into the prompt and the CLIP captions)")
        return f"{name} → {anchor} @ {self.check(source, what, folder_ok=True)}"

    def add_model(self, role: str, ref: str | None, upload: str | None, name: str | None,
                  anchor: str | None) -> tuple[str, str, str]:
        """Check a user's model (a typed reference or an upload); returns (role, label, value) for a dropdown."""
        source = upload or ref
        if upload:
            if Path(upload).stat().st_size > self.settings.max_upload_mb * 2**20:
                raise UserError(f"upload: larger than {self.settings.max_upload_mb} MB (TAD_MAX_UPLOAD_MB)")
            if Path(upload).suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise UserError(f"upload: {Path(upload).name} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
        if role == "base":
            value = self.check(source, "base model")
            return role, f"custom: {short(value)}", value
        if role not in ("object", "style", "extra"):
            raise UserError(f"role {role!r} is not one of base, object, style, extra")
        value = self.custom_concept(name or "", anchor or "", source or "", f"{role} concept")
        return role, f"custom: {name} → {anchor} ({short(source or '')})", value

    def materialize(self, spec: GridSpec) -> GridSpec:
        """Hub ids of checkpoints → files in the Hugging Face cache (bases, ControlNets and CLIP load from ids)."""
        obj = replace(spec.object, source=self._fetch(spec.object.source, "object")) if spec.object else None
        sty = replace(spec.style, source=self._fetch(spec.style.source, "style")) if spec.style else None
        extra = [replace(e, source=self._fetch(e.source, e.name)) for e in spec.extra]
        return replace(spec, object=obj, style=sty, extra=extra)

    def _fetch(self, source: str, what: str) -> str:
        if Path(source).exists() or not HUB_ID.fullmatch(source):
            return source
        from huggingface_hub import hf_hub_download, snapshot_download

        try:
            if source.count("/") > 1:  # owner/name/path/in/repo.safetensors
                owner, name, filename = source.split("/", 2)
                return hf_hub_download(f"{owner}/{name}", filename)
            patterns = ["*.safetensors"] if self.settings.hosted else ["*.safetensors", *(
                f"*{s}" for s in PICKLE_SUFFIXES)]
            folder = Path(snapshot_download(source, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001 - offline, gated, missing: all are "cannot download"
            raise UserError(f"{what}: cannot download {source!r} from the Hub ({type(e).__name__}); check the id "
                            "and the network, or give a local file") from None
        files = sorted(f for f in folder.rglob("*") if f.suffix in CHECKPOINT_SUFFIXES)
        if len(files) != 1:
            raise UserError(f"{what}: {source!r} holds {len(files)} checkpoint files; name one as "
                            "owner/name/path/to/file.safetensors")
        return str(files[0])
