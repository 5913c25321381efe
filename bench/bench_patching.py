#!/usr/bin/env python
"""Hot-patching benchmark: WeightPatcher vs a naive rebuild vs a plain memcpy, on an SD-1.4-shaped UNet.

    python bench/bench_patching.py            # SD-1.4 UNet (859.5 M params, 3.44 GB fp32); writes bench/RESULTS.md
    python bench/bench_patching.py --quick    # small UNet, a dry run that only prints

A script, not a timed unit test. Cases, all on one UNet with random weights built from bench/sd_v1_configs/unet.json:
  full UNet,  K = 1 vector (fp32 storage, what TaskVector holds)
  full UNet,  K = 5 distinct fp32 vectors as windows of one noise buffer (5 separate fp32 vectors, 17 GB, do not
              fit in 24 GiB next to the model and its backups): vector j reads the buffer from offset j·64 MB, so
              at any moment the K vectors read K different places, and a window is read again only after
              hundreds of MB of other traffic: every read streams from DRAM, as from separate vectors (L3 = 32 MB)
  full UNet,  K = 5 distinct vectors stored in fp16 and upcast on the fly (what fits 5 separate vectors in RAM);
              K is lowered, and the table says so, if memory is short
  Kumari kv,  the 32 cross-attention attn2.to_k/to_v weights (19.2 M params), K = 1 and K = 5, fp32 storage

Definitions used in the table:
  memcpy     median time of ``dst.copy_(src)`` over the touched tensors (model ← backups): reads N bytes and writes N
  bandwidth  2N / memcpy, i.e. bytes read + written per second
  bound      bytes a switch must move / bandwidth; a switch reads the base (N), reads the K vectors and writes the
             parameters (N): K + 2 passes over the touched bytes (an fp16-stored vector counts half a pass);
             a restore is one memcpy
  naive      merge into a new state dict (fp32 math per tensor, like TaskVector.apply) + rebuild the UNet; three
             rebuilds are timed: ``UNet2DConditionModel.from_pretrained(folder)`` + ``load_state_dict`` (the
             issue's naive way; the base UNet is saved once as safetensors and is read from the page cache, the
             kindest case for the naive side), ``from_config`` (random init) + ``load_state_dict``, and
             ``from_config`` on the meta device + ``load_state_dict(assign=True)`` (no file read at all: the
             cheapest conceivable rebuild, for context)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import random
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_grid import cpu_name  # noqa: E402  (the benches' shared report helpers)
from results_md import publish  # noqa: E402  (bench/ is on sys.path: run as a script)

from tad_demo.core.patching import WeightPatcher  # noqa: E402

log = logging.getLogger("bench_patching")
GB = 1e9
HEADING = "## Hot patching (bench/bench_patching.py)"
SD14_UNET_PARAMS = 859_520_964
SD14_KV_PARAMS = 19_169_280


# --- measurement helpers ----------------------------------------------------------------------------------------
def rss() -> int:
    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM, so each case gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_memory() -> None:
    """Free dropped tensors and hand glibc's freed heap back to the OS so RSS numbers of later cases are clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# --- model and vectors ------------------------------------------------------------------------------------------
def unet_config(quick: bool) -> dict:
    cfg = json.loads((ROOT / "bench" / "sd_v1_configs" / "unet.json").read_text())
    if quick:  # same block structure, 1/10 of the channels: ~10 M params
        cfg["block_out_channels"] = [32, 64, 128, 128]
    return cfg


def build_unet(cfg: dict):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(cfg).eval().requires_grad_(False)


def make_vector(state: dict[str, torch.Tensor], keys: list[str], seed: int, dtype: torch.dtype) -> dict:
    """Seeded noise shaped like ``keys`` (a fake fine-tune), component-prefixed, stored in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in keys:
        out[f"unet.{k}"] = (1e-3 * torch.randn(state[k].shape, generator=g)).to(dtype)
    return out


WINDOW_GAP = 16 << 20  # elements (64 MB of fp32) between the windows of make_window_vectors: twice the L3 cache


def make_window_vectors(state: dict[str, torch.Tensor], keys: list[str], k: int, seed: int) -> list[dict]:
    """K distinct fp32 vectors in the memory of about one: vector j views one seeded noise buffer from offset
    j·WINDOW_GAP (see the module docstring for why each read still streams from DRAM)."""
    total = sum(state[key].numel() for key in keys)
    g = torch.Generator().manual_seed(seed)
    buf = 1e-3 * torch.randn(total + (k - 1) * WINDOW_GAP, generator=g)
    vectors = []
    for j in range(k):
        out, pos = {}, j * WINDOW_GAP
        for key in keys:
            n = state[key].numel()
            out[f"unet.{key}"] = buf[pos:pos + n].view(state[key].shape)
            pos += n
        vectors.append(out)
    return vectors


def random_terms(vectors: list[dict], rng: random.Random) -> list[tuple[dict, float]]:
    # a fresh non-zero λ per term every time: the patcher skips a combination equal to the current one
    return [(v, rng.choice((-1, 1)) * rng.uniform(0.25, 2.0)) for v in vectors]


# --- one case -----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    keys: list[str]
    k: int
    storage: torch.dtype
    note: str = ""
    windows: bool = False  # K vectors as windows of one buffer (make_window_vectors)
    touched_params: int = 0
    touched_bytes: int = 0
    memcpy: float = 0.0
    first_apply: float = 0.0
    fresh_clone: float = 0.0
    apply: float = 0.0
    switch: float = 0.0
    restore: float = 0.0
    naive_merge: float | None = None
    naive_meta: float | None = None
    naive_init: float | None = None
    naive_pre: float | None = None
    rss_before: int = 0
    rss_after: int = 0
    peak: int = 0
    backup_bytes: int = 0
    vector_bytes: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def bandwidth(self) -> float:
        return 2 * self.touched_bytes / self.memcpy

    @property
    def apply_bytes(self) -> float:
        vec = self.k * self.touched_params * torch.empty((), dtype=self.storage).element_size()
        return 2 * self.touched_bytes + vec

    @property
    def bound_apply(self) -> float:
        return self.apply_bytes / self.bandwidth

    @property
    def bound_cycle(self) -> float:
        return self.bound_apply + self.memcpy


def run_case(case: Case, unet, cfg: dict, *, repeats: int, naive_repeats: int, margin: float, naive_init: bool,
             threads: int, rng: random.Random, pretrained: Path | None = None) -> None:
    state = unet.state_dict()
    case.touched_params = sum(state[k].numel() for k in case.keys)
    case.touched_bytes = sum(nbytes(state[k]) for k in case.keys)
    elem = torch.empty((), dtype=case.storage).element_size()
    vec_bytes = case.touched_params * elem

    # Memory plan: K vectors + backups (patcher) or K vectors + merged dict (naive, after the backups are freed).
    avail = psutil.virtual_memory().available - margin
    if case.windows:  # one buffer whatever K
        k_fit = case.k if avail - case.touched_bytes > vec_bytes + case.k * WINDOW_GAP * elem else 0
    else:
        k_fit = int((avail - case.touched_bytes) // vec_bytes) if vec_bytes else case.k
    if k_fit < case.k:
        if k_fit < 1:
            case.skipped.append(f"not enough memory ({avail / GB:.1f} GB available after the margin)")
            return
        case.note += f" K lowered from {case.k} to {k_fit}: {avail / GB:.1f} GB available after the margin."
        case.k = k_fit

    # What a fresh allocation costs here (first-touch page faults): the naive merge pays it on every switch, the
    # patcher once, for its backups.
    release_memory()
    clones = []
    t0 = time.perf_counter()
    for k in case.keys:
        clones.append(state[k].clone())
    case.fresh_clone = time.perf_counter() - t0
    del clones
    release_memory()

    log.info("%s: generating %d vector(s) over %d tensors (%.2f GB each)", case.name, case.k, len(case.keys),
             vec_bytes / GB)
    if case.windows:
        vectors = make_window_vectors(state, case.keys, case.k, seed=100)
        case.vector_bytes = vec_bytes + (case.k - 1) * WINDOW_GAP * elem
    else:
        vectors = [make_vector(state, case.keys, seed=100 + i, dtype=case.storage) for i in range(case.k)]
        case.vector_bytes = case.k * vec_bytes
    release_memory()

    # (a) the patcher --------------------------------------------------------------------------------------------
    if psutil.virtual_memory().available - margin / 2 < case.touched_bytes:  # others grew meanwhile: don't OOM
        case.skipped.append("skipped: no room for the backups after generating the vectors")
        vectors.clear()
        return
    reset_peak_rss()
    case.rss_before = rss()
    patcher = WeightPatcher(unet, num_threads=threads)
    case.first_apply = timed(lambda: patcher.apply(random_terms(vectors, rng)))  # includes cloning the backups
    patcher.restore()
    case.rss_after = rss()
    case.backup_bytes = patcher.backup_bytes

    # memcpy over the same tensors, model ← backups (private access: the bench wants exactly the same bytes). The
    # four measurements are interleaved in every repeat so that load from other processes hits them alike.
    pairs = [(state[k], patcher._slots[f"unet.{k}"].backup) for k in case.keys]

    def memcpy() -> None:
        for dst, src in pairs:
            dst.copy_(src)  # the model is at base here, so this rewrites the same bytes

    memcpys, applies, switches, restores = [], [], [], []
    for _ in range(repeats):
        memcpys.append(timed(memcpy))
        applies.append(timed(lambda: patcher.apply(random_terms(vectors, rng))))  # base → combination
        switches.append(timed(lambda: patcher.apply(random_terms(vectors, rng))))  # combination → another one
        restores.append(timed(patcher.restore))
    case.memcpy, case.apply, case.switch, case.restore = map(statistics.median, (memcpys, applies, switches,
                                                                                 restores))
    patcher.restore()
    case.rss_after = max(case.rss_after, rss())
    case.peak = peak_rss()
    pairs.clear()
    patcher.release()  # frees the backups (and drops the applied vectors) before the naive path needs room
    release_memory()

    # (b) naive: merge into a new state dict, rebuild the UNet ----------------------------------------------------
    from diffusers import UNet2DConditionModel

    def merge() -> dict[str, torch.Tensor]:
        terms = random_terms(vectors, rng)
        merged = dict(state)
        for k in case.keys:
            acc = state[k].to(torch.float32, copy=True)
            for v, s in terms:
                acc += s * v[f"unet.{k}"].to(torch.float32)
            merged[k] = acc.to(state[k].dtype)
        return merged

    merge_t, meta_t, init_t, pre_t = [], [], [], []
    for _ in range(naive_repeats):
        t0 = time.perf_counter()
        merged = merge()
        merge_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.device("meta"):
            m = UNet2DConditionModel.from_config(cfg)
        m.load_state_dict(merged, assign=True)
        meta_t.append(time.perf_counter() - t0)
        del m
        release_memory()
        # the literal naive rebuild allocates a whole second model: only if it fits (on the last repeat the
        # vectors are no longer needed, so drop them to make room)
        model_bytes = sum(nbytes(t) for t in state.values())
        if naive_init and len(merge_t) == naive_repeats and psutil.virtual_memory().available - margin < model_bytes:
            vectors.clear()
            release_memory()
        if naive_init and psutil.virtual_memory().available - margin > model_bytes:
            t0 = time.perf_counter()
            m = UNet2DConditionModel.from_config(cfg)
            m.load_state_dict(merged)
            init_t.append(time.perf_counter() - t0)
            del m
            release_memory()
            if pretrained is not None:
                t0 = time.perf_counter()
                m = UNet2DConditionModel.from_pretrained(pretrained)
                m.load_state_dict(merged)
                pre_t.append(time.perf_counter() - t0)
                del m
        elif naive_init:
            case.skipped.append("from_config+load_state_dict rebuild skipped: a second model does not fit")
            naive_init = False
        del merged
        release_memory()
    case.naive_merge = statistics.median(merge_t)
    case.naive_meta = statistics.median(meta_t)
    case.naive_init = statistics.median(init_t) if init_t else None
    case.naive_pre = statistics.median(pre_t) if pre_t else None
    vectors.clear()
    release_memory()


# --- report --------------------------------------------------------------------------------------------------------
def storage_name(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16"}.get(dt, str(dt))


def report(cases: list[Case], header: list[str]) -> str:
    lines = [*header, "",
             "| case | touched | K × storage | memcpy (bandwidth) | bound switch | switch (apply from base) | "
             "ratio | restore | apply+restore / bound | first apply (backups) | naive merge + rebuild "
             "(from_pretrained / meta / from_config) | speedup vs naive |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # fresh-allocation cost goes to the notes: it explains both the first apply and the naive merge
    for c in cases:
        if c.skipped and not c.memcpy:
            lines.append(f"| {c.name} | — | {c.k} × {storage_name(c.storage)} | skipped: {'; '.join(c.skipped)} "
                         "| | | | | | | | |")
            continue
        naive = [c.naive_merge + x if x is not None else None for x in (c.naive_pre, c.naive_meta, c.naive_init)]
        naive_txt = " / ".join(fmt_s(x) for x in naive)
        speed = " / ".join(f"{x / c.apply:.0f}×" if x else "—" for x in naive)
        lines.append(
            f"| {c.name} | {c.touched_params / 1e6:.1f} M params, {c.touched_bytes / GB:.3f} GB | "
            f"{c.k} × {storage_name(c.storage)} | {fmt_s(c.memcpy)} ({c.bandwidth / GB:.1f} GB/s) | "
            f"{fmt_s(c.bound_apply)} | {fmt_s(c.apply)} (from patched: {fmt_s(c.switch)}) | "
            f"**{c.apply / c.bound_apply:.2f}×** | {fmt_s(c.restore)} ({c.restore / c.memcpy:.2f}× memcpy) | "
            f"{fmt_s(c.apply + c.restore)} / {fmt_s(c.bound_cycle)} = {(c.apply + c.restore) / c.bound_cycle:.2f}× | "
            f"{fmt_s(c.first_apply)} | {naive_txt} | {speed} |")
    lines += ["", "Memory (RSS, resident vectors included; the patcher's own cost is the backups of touched tensors "
              "plus 4 MiB of scratch):", "",
              "| case | vectors resident | RSS before patcher | RSS after apply | growth | backups (touched bytes) | "
              "growth / touched | peak RSS of the patcher phase |", "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        if not c.memcpy:
            continue
        growth = c.rss_after - c.rss_before
        resident = (f"{c.k} windows of one {c.vector_bytes / GB:.3f} GB buffer" if c.windows else
                    f"{c.k} × {c.vector_bytes / c.k / GB:.3f} GB")
        lines.append(f"| {c.name} | {resident} | {c.rss_before / GB:.2f} GB | "
                     f"{c.rss_after / GB:.2f} GB | {growth / GB:.3f} GB | {c.backup_bytes / GB:.3f} GB | "
                     f"{growth / c.touched_bytes:.2f} | {c.peak / GB:.2f} GB |")
    done = [c for c in cases if c.memcpy]
    if done:
        fp32 = [c for c in done if c.storage == torch.float32] or done
        worst = max(fp32, key=lambda c: c.apply / c.bound_apply)
        kumari = [c for c in done if c.name.startswith("Kumari")]
        lines += ["", "Targets:",
                  f"- switch ≤ 2× bound (fp32 vectors, TaskVector's storage): worst "
                  f"{worst.apply / worst.bound_apply:.2f}× ({worst.name}) — "
                  + ("met" if worst.apply / worst.bound_apply <= 2 else "NOT met")]
        lines += [f"- {c.name} (vectors stored {storage_name(c.storage)}): {c.apply / c.bound_apply:.2f}× its bound, "
                  "which counts an fp16 vector as half a pass; upcasting it costs a pass in cache that the memory "
                  "traffic does not show (fp32 products are rounded one by one, as TaskVector's operators do)"
                  for c in done if c not in fp32]
        have = [c for c in done if c.naive_pre is not None]
        if have:
            speed = {c.name: (c.naive_merge + c.naive_pre) / c.apply for c in have}
            low = min(speed, key=speed.get)
            lines.append(f"- ≥ 20× faster than the naive rebuild (merge + from_pretrained + load_state_dict): lowest "
                         f"{speed[low]:.0f}× ({low}) — " + ("met" if speed[low] >= 20 else "NOT met") + "; "
                         + ", ".join(f"{k} {v:.0f}×" for k, v in speed.items()))
            lines += [f"  - {c.name}: 20× needs a switch ≤ {fmt_s((c.naive_merge + c.naive_pre) / 20)}, "
                      f"{(c.naive_merge + c.naive_pre) / 20 / c.bound_apply:.2f}× its memory-traffic bound"
                      for c in have if speed[c.name] < 20]
        for label, attr in (("from_config + load_state_dict", "naive_init"), ("meta + assign, no file read",
                                                                              "naive_meta")):
            have = [c for c in done if getattr(c, attr) is not None]
            if have:
                lines.append(f"- for context, vs merge + {label}: " + ", ".join(
                    f"{c.name} {(c.naive_merge + getattr(c, attr)) / c.apply:.0f}×" for c in have))
        if kumari:
            slow = max(kumari, key=lambda c: c.apply)
            lines.append(f"- Kumari switch ≤ 50 ms: slowest {fmt_s(slow.apply)} ({slow.name}) — "
                         + ("met" if slow.apply <= 0.05 else "NOT met"))
    notes = [f"- {c.name}: cloning the touched tensors into fresh memory takes {fmt_s(c.fresh_clone)} "
             f"({c.touched_bytes / c.fresh_clone / GB:.2f} GB/s, first-touch page faults) — paid once by the patcher "
             "(first apply, for its backups) and on every switch by the naive merge." for c in cases if c.memcpy]
    notes += [f"- {c.name}: {c.note.strip()}" for c in cases if c.note.strip()]
    notes += [f"- {c.name}: {s}" for c in cases for s in c.skipped if c.memcpy]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small UNet (~10 M params): a dry run; does not write")
    ap.add_argument("--k", type=int, default=5, help="vectors in the multi-vector cases (default 5)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 7, quick 3)")
    ap.add_argument("--naive-repeats", type=int, default=1, help="repeats of the (slow) naive rebuild")
    ap.add_argument("--no-naive-init", action="store_true", help="skip the from_config (random init) rebuild")
    ap.add_argument("--margin-gb", type=float, default=4.0, help="memory left free for the rest of the machine")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for everything timed (default 1: on a shared 2-core machine two OpenMP "
                         "threads make small ops 100× slower)")
    ap.add_argument("--note", default="", help="free text for the machine note (e.g. concurrent jobs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    repeats = args.repeats or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)  # the same setting for the patcher, memcpy and the naive path
    rng = random.Random(0)

    cpu0, own0, wall0 = psutil.cpu_times(), psutil.Process().cpu_times(), time.perf_counter()
    cfg = unet_config(args.quick)
    log.info("building the UNet (%s) with random init", "quick" if args.quick else "SD-1.4 config")
    unet = build_unet(cfg)
    state = unet.state_dict()
    n_params = sum(t.numel() for t in state.values())
    kv = [k for k in state if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    n_kv = sum(state[k].numel() for k in kv)
    if not args.quick:
        assert n_params == SD14_UNET_PARAMS, n_params
        assert len(kv) == 32 and n_kv == SD14_KV_PARAMS, (len(kv), n_kv)
    all_keys = [k for k, v in state.items() if v.is_floating_point()]
    del state
    log.info("UNet: %s params (%.2f GB fp32); kv: %d tensors, %s params", f"{n_params:,}", n_params * 4 / GB,
             len(kv), f"{n_kv:,}")

    cases = [
        Case("Kumari kv, K=1", kv, 1, torch.float32),
        Case(f"Kumari kv, K={args.k}", kv, args.k, torch.float32),
        Case("full UNet, K=1", all_keys, 1, torch.float32),
        Case(f"full UNet, K={args.k}", all_keys, args.k, torch.float32, windows=True,
             note=f"the {args.k} fp32 vectors are windows of one buffer, 64 MB apart (see the docstring)."),
        Case(f"full UNet, K={args.k} fp16", all_keys, args.k, torch.float16,
             note="vectors stored in fp16 and upcast chunk by chunk" + (
                 " (as in the full run)." if args.quick else
                 f" ({args.k} full fp32 vectors = {args.k * n_params * 4 / GB:.3g} GB would not fit next to the "
                 "model and its backups).")),
    ]
    naive_repeats = max(args.naive_repeats, 3 if args.quick else 1)
    with tempfile.TemporaryDirectory(prefix="bench_unet_") as tmp:
        pretrained = Path(tmp) / "unet"
        unet.save_pretrained(pretrained)  # safetensors: what from_pretrained reads on the naive side
        for case in cases:
            log.info("case %s", case.name)
            run_case(case, unet, cfg, repeats=repeats, naive_repeats=naive_repeats if "Kumari" not in case.name
                     else max(naive_repeats, 2), margin=args.margin_gb * GB, naive_init=not args.no_naive_init,
                     threads=args.threads, rng=rng, pretrained=pretrained)

    wall = time.perf_counter() - wall0
    cpu1, own1 = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = lambda c: c.user + c.system + getattr(c, "nice", 0.0)
    others = max(0.0, (busy(cpu1) - busy(cpu0)) - (busy(own1) - busy(own0))) / wall
    vm = psutil.virtual_memory()
    cmd = shlex.join(["python", "bench/bench_patching.py", *sys.argv[1:]])
    quick_note = " (quick: channels 32-64-128-128)" if args.quick else ""
    note = f" ({args.note})" if args.note else ""
    header = [
        f"Command: `{cmd}` — {time.strftime('%Y-%m-%d %H:%M')}, {wall / 60:.1f} min.",
        "",
        f"Machine: {cpu_name()}, {psutil.cpu_count()} cores, {vm.total / 2**30:.0f} GiB RAM, CPU only, "
        f"torch {torch.__version__} with {args.threads} thread(s). Other processes used {others:.2f} cores on "
        f"average during the run{note}. Medians of {repeats} repeats (naive: {naive_repeats}).",
        "",
        f"Model: UNet2DConditionModel from `bench/sd_v1_configs/unet.json`{quick_note}, random init, fp32: "
        f"{n_params:,} params, {n_params * 4 / GB:.2f} GB; Kumari kv = {len(kv)} tensors, {n_kv:,} params. "
        "Bound = (K + 2) passes over the touched bytes at the measured memcpy bandwidth (read + write); "
        "definitions in the script's docstring. Targets: switch ≤ 2× bound, ≥ 20× faster than the naive "
        "rebuild, Kumari switch ≤ 50 ms.",
    ]
    if args.quick:
        header += ["", "Quick mode is dominated by per-op dispatch (~5 µs × (2K + 2) ops on each of 686 tiny tensors): "
                   "its ratios say nothing about the full model."]
    md = report(cases, header)
    publish(args.out, HEADING, md, write=not args.quick and not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
