"""Reading checkpoint files safely: safetensors (header checked before reading), PyTorch pickles (only ever with
``torch.load(..., weights_only=True)``), and converting a pickle to safetensors.

    read_safetensors("model.safetensors")      # {name: tensor}, exactly as stored
    safe_torch_load("kumari.ckpt")             # what the pickle holds; anything needing code is refused
    read_file(path)                            # (flat {name: tensor}, safetensors metadata) of either kind
    describe(path)                             # what a file that is no checkpoint is: "a Git LFS pointer", …
    convert("model.ckpt", "model.safetensors") # pickle -> safetensors, loaded with weights_only=True

Names are returned as stored; turning them into canonical diffusers names is ``layouts.py``'s job.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import CheckpointError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

COMPONENTS = ("unet", "text_encoder", "vae", "controlnet")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")

def existing_path(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent if p.parent.exists() else None
        hint = f" ({parent} has: {listing(parent)})" if parent else ""
        raise CheckpointError(f"{p}: no such file or folder; check the path{hint}")
    return p


def read_json(path: Path) -> Any:
    """A JSON file (config.json, model_index.json, an index of shards), or one line naming it and what is wrong."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a JSON file: it is {describe(path)}") from None
    except json.JSONDecodeError as e:
        what = describe(path)
        found = "" if what.startswith("a JSON") else f"; it is {what}"
        raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno}){found}; "
                              "the file is corrupt or not a config: download or write it again") from None


def listing(folder: Path, limit: int = 8) -> str:
    names = sorted(x.name + ("/" if x.is_dir() else "") for x in folder.iterdir())
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def sniff(path: Path) -> str:
    """'zip' (torch.save), 'pickle' (legacy torch.save / raw pickle), 'safetensors' or 'unknown', by content."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, like a pickle.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "unknown"


def describe(path: Path) -> str:
    """What a file that is neither safetensors nor a PyTorch pickle holds, in words, for one-line errors:
    'an empty file', 'a Git LFS pointer (…)', 'an HTML page', 'a JSON text file', 'a text file ("…")' or
    'unrecognised binary data'."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return ("a Git LFS pointer, not the file itself (fetch it with `git lfs pull`, or download the file "
                "rather than the pointer)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        text = head[: e.start].decode("utf-8") if e.start > len(head) - 4 else None  # a character cut at 4096
    if text is None or "\x00" in text:
        return f"unrecognised binary data ({size} bytes; random bytes or a corrupt download)"
    low = text.lstrip().lower()
    if low.startswith(("<!doctype html", "<html")) or "<html" in low[:512]:
        return "an HTML page (a web page saved instead of the file: download the file's raw/resolve link)"
    if low.startswith(("{", "[")):
        return "a JSON text file, not weights"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file ({first!r}…), not weights"


def _one_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    return " ".join(text.split())


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed JSON header, after checking that the file is a complete safetensors file."""
    size = path.stat().st_size
    kind = sniff(path) if size else "empty"
    if kind in ("zip", "pickle"):
        raise CheckpointError(
            f"{path} is not a safetensors file (it looks like a PyTorch pickle); make a real one with "
            f"`python -m tad_demo convert {path.name} OUT.safetensors`")
    if kind == "unknown" and not _looks_cut(path):
        raise CheckpointError(f"{path} is not a safetensors file: it is {describe(path)}")
    if size < 8:
        raise CheckpointError(f"{path}: file is truncated ({size} bytes); download or write it again")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            if kind != "safetensors":
                raise CheckpointError(f"{path} is not a safetensors file: it is {describe(path)}")
            raise CheckpointError(f"{path}: file is truncated (header of {n} bytes, file of {size}); "
                                  "download or write it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON: {_one_line(e)}); "
                                  "it may be corrupt: download or write it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(f"{path}: corrupt safetensors header (bad data_offsets); download or write it "
                              "again") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: file is truncated (needs {8 + n + end} bytes, has {size}); "
                              "download or write it again")
    return header


def _looks_cut(path: Path) -> bool:
    """A safetensors file cut inside its 8-byte length or its header (sniff needs 9 bytes and a '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) < 9 and (len(head) < 8 or int.from_bytes(head[:8], "little") < 100_000_000)


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if none)."""
    p = existing_path(path)
    return dict(_safetensors_header(p).get("__metadata__") or {})


def read_safetensors(path: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, as stored."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = existing_path(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a safetensors file; use load_weights() for model folders")
    _safetensors_header(p)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot read safetensors file ({_one_line(e)}); the file may be corrupt: "
                              "download or write it again") from None


def safe_torch_load(path: PathLike) -> Any:
    """Unpickle a PyTorch checkpoint with ``weights_only=True``: tensors and plain containers only, no code runs."""
    p = existing_path(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder, not a checkpoint file; use load_weights() for model folders")
    kind = sniff(p) if p.stat().st_size else "empty"
    if kind == "safetensors":
        log.warning("%s is a safetensors file despite its name; reading it as safetensors", p)
        return read_safetensors(p)
    if kind not in ("zip", "pickle"):
        raise CheckpointError(f"{p} is not a PyTorch checkpoint: it is {describe(p)}")
    try:
        # An open file, not the path: torch.load would hand a path ending in .safetensors to safetensors.
        with open(p, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _one_line(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        what = (f"contains objects of type {found.group(1)}" if found else
                f"needs more than tensors and plain containers ({_weights_only_reason(msg)})")
        raise CheckpointError(
            f"{p}: refused to load: the pickle {what}, and unpickling it would run arbitrary code; if you trust "
            "it, load it yourself in a trusted environment and save the weights with safetensors "
            "(safetensors.torch.save_file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        what = "an incomplete PyTorch zip archive" if kind == "zip" else "an incomplete or corrupt PyTorch pickle"
        raise CheckpointError(f"{p}: file is truncated or corrupt: {what} ({_one_line(e)[:120]}); download or write "
                              "it again") from None


def _weights_only_reason(msg: str) -> str:
    m = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", msg)
    return m.group(1).strip() if m else msg[:200]


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat tensors and safetensors metadata of a single checkpoint file (safetensors or pickle).

    A ``.safetensors`` name must hold safetensors; other names (``.ckpt``/``.bin``/``.pt``, and names without a
    suffix such as Kumari's intermediate ``delta-<step>`` files) are read by what their bytes are.
    """
    if path.suffix == ".safetensors" or (path.suffix not in PICKLE_SUFFIXES and sniff(path) == "safetensors"):
        return read_safetensors(path), safetensors_metadata(path)
    return flatten_state(safe_torch_load(path), str(path)), {}


def flatten_state(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from what a pickle held: {'state_dict': …} is unwrapped, {'unet': {…}} (Kumari
    delta.bin) becomes 'unet.'-prefixed keys; other entries (step counters, optimizer state) are dropped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin}: holds a {type(obj).__name__}, not a dict of tensors; save a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        others = [str(k) for k in obj if k != "state_dict"]
        if others:
            log.info("%s: using 'state_dict', ignoring %s", origin, ", ".join(others[:8]))
        obj = obj["state_dict"]
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[str(k)] = v
        elif k in COMPONENTS and isinstance(v, Mapping):
            for kk, vv in v.items():
                if isinstance(vv, torch.Tensor):
                    out[f"{k}.{kk}"] = vv
                else:
                    dropped.append(f"{k}.{kk}")
        else:
            dropped.append(str(k))
    if dropped:
        log.info("%s: ignoring %d non-tensor entries (%s)", origin, len(dropped), ", ".join(dropped[:8]))
    return out



# --- pickle -> safetensors ---------------------------------------------------------------------------------

def convert(src: PathLike, dst: PathLike, *, overwrite: bool = False) -> Path:
    """Convert a pickled checkpoint to safetensors (loaded with ``weights_only=True``; names kept as stored).

    ``{'state_dict': …}`` is unwrapped, ``{'unet': {…}}`` becomes ``unet.``-prefixed keys, non-tensor entries
    are dropped (logged). Never overwrites ``src``; overwrites an existing ``dst`` only with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    s, d = existing_path(src), Path(dst).expanduser()
    if s.is_dir():
        raise CheckpointError(f"{s} is a folder; convert takes one checkpoint file")
    if sniff(s) == "safetensors":
        raise CheckpointError(f"{s} is already a safetensors file; nothing to convert")
    if d.suffix != ".safetensors":
        raise CheckpointError(f"{d}: the output name must end in .safetensors")
    if d.exists() and d.resolve() == s.resolve():
        raise CheckpointError(f"{d}: refusing to overwrite the source checkpoint; choose another output path")
    if d.exists() and not overwrite:
        raise CheckpointError(f"{d} already exists; choose another output path or pass overwrite=True")
    tensors = flatten_state(safe_torch_load(s), str(s))
    if not tensors:
        raise CheckpointError(f"{s}: no tensors found")
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            v = v.clone()  # safetensors refuses tensors sharing memory (tied weights, views)
        seen.add(ptr)
        out[k] = v
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(d.name + ".tmp")
    save_file(out, str(tmp), metadata={"format": "pt", "converted_from": s.name})
    tmp.replace(d)
    log.info("converted %s -> %s (%d tensors)", s, d, len(out))
    return d
