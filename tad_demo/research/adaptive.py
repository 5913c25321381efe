"""Adaptive task-vector selection (multi-concept paper §5): which vectors of a pool matter for this prompt?

    sel = select(lab, "a smiley in striped style", ["smiley", "die", "striped", "dotted"],
                 t_switch=10, alpha=2.0, seeds=[0, 1], top_k=2)
    sel.ranking, sel.chosen, sel.final_images          # most relevant first; the chosen ones; θ₀ + Σ λ τ_chosen
    table = auc_table(lab, t_switches=[0, 4, 8, 12, 16, 20], alphas=[0.5, 1, 2, 3, 4, 5])   # toy world, labelled
    table.auc(8, 2.0)                                   # ROC AUC of "1 − similarity" for "the prompt names it"
    cal = calibrate(lab, pool, t_switch=8, alpha=2.0)   # each vector's usual movement on prompts naming none
    table.auc(8, 2.0, calibration=cal)                  # ranked by (1 − s) / that movement; select(...,
                                                        # t_switch=8, alpha=2.0, calibration=cal) ranks so too
    cals = calibrations(lab, pool, t_switches=[8], alphas=[0.5, 2.0]).values()
    select(lab, prompt, pool, t_switch=8, alpha=(0.5, 2.0), calibration=cals, seeds=[0], top_k=2)  # two strengths
    trade = tradeoff(lab, table, t_switch=8, alpha=2.0) # target / control accuracy: all vectors vs selected ones

The recipe (paper eq. 10–12), for a prompt, its seeds and a pool τ₁ … τ_N:
  1. run the base θ₀ from the seeds' initial latents to step ``t_switch`` — the *prefix*, computed once;
  2. finish the base → X₀; from the same prefix latents finish each candidate θ₀ + α·τᵢ → Xᵢ;
  3. sᵢ = cos(CLIP(Xᵢ), CLIP(X₀)): a relevant vector moves the image, so a low sᵢ means relevant;
  4. rank by sᵢ (ascending) and keep the top k and/or those with sᵢ < threshold; with a calibration, rank by
     (1 − sᵢ) / cᵢ, cᵢ = the median of 1 − sᵢ over prompts that name no pool concept (:class:`Calibration`);
     probed at several strengths α (each calibrated), rank by the largest of a vector's relevances (:func:`strongest`);
  5. generate the final images with only the chosen vectors, θ₀ + Σ λⱼ τⱼ (λ = +1 ablates).

``t_switch`` counts denoising steps done with the base: 0 switches before the first step, T never switches
(every candidate *is* the base image: s = 1 and AUC = 0.5, the paper's last column). α > 0 ablates.

The loop is explicit (UNet + scheduler + classifier-free guidance; :class:`Denoiser`) and does the arithmetic of
diffusers' SD pipeline as :func:`tad_demo.runtime.sampling.sample` calls it, on the same batches (32 rows): the base
images are bit-identical to ``lab.generate`` (tests/test_adaptive.py checks it).

Cost in UNet image-steps per (prompt, seed), N candidates, T steps, switch at t:
  naive (N + 1 independent runs)      (N + 1)·T
  shared prefix (this module)         T + N·(T − t)        at t = T/2: (N + 1)/(1 + N/2) < 2× fewer, for every N
  shared prefix + lookahead m         T + N·m              candidates stop after m steps and are scored by their
                                                           predicted x₀ against the base's x₀ at the same step
bench/bench_adaptive.py measures these side by side; ``auc_table`` measures the lookahead's AUC next to the
paper's (it comes free: a full branch passes through step t + m).
"""

from __future__ import annotations

import copy
import csv
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ClipUnavailable, ModelError
from ..core.world import World
from .lab import Lab, LabError, check_lambdas
from .report import text_table

log = logging.getLogger(__name__)

DEFAULT_FRACS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)   # paper Table 2: t_switch ∈ {0, 10, …, 50} of 50 steps
DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)  # paper Table 3
BATCH = 32                                       # rows per UNet batch: sampling.sample's default, for equality
FULL = 0                                         # method key: candidates run to the end (the paper's method)
# Smallest calibration scale. CLIP cosines of one image with itself differ from 1 by ~1e-7 in fp32; the smallest
# usual movement measured on the toy world (checkered on neutral prompts, α = 1, T/2) is 4e-4.
SCALE_FLOOR = 1e-4


# --- the explicit denoising loop ---------------------------------------------------------------------------

@dataclass
class Counter:
    """UNet work: forward calls, and per-sample image-steps (a classifier-free-guidance pair counts once)."""

    calls: int = 0
    image_steps: int = 0
    on_call: Callable[[Counter], None] | None = field(default=None, repr=False, compare=False)  # progress/cancel

    def tick(self, rows: int) -> None:
        """One UNet call over ``rows`` samples (``on_call`` may raise to stop the run)."""
        self.calls += 1
        self.image_steps += rows
        if self.on_call is not None:
            self.on_call(self)

    def as_dict(self) -> dict[str, int]:
        return {"unet_calls": self.calls, "image_steps": self.image_steps}


@dataclass
class State:
    """A batch of runs after ``step`` denoising steps (the scheduler is part of the state: multistep ones keep
    history). ``x0``: the scheduler's prediction of the clean latents at the last step taken, if it makes one."""

    step: int
    latents: Any
    scheduler: Any
    x0: Any = None


class Denoiser:
    """Denoising of one batch of (prompt, seed) rows, step by step, under whatever weights the model holds.

    Same arithmetic as the SD pipeline called by ``sampling.sample`` (initial latents from ``initial_latents``,
    ``[uncond, cond]`` batch, guidance, ``scheduler.step`` with eta 0), so a run 0 → T gives its images exactly.
    """

    def __init__(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float,
                 height: int | None = None, width: int | None = None, prompt_cache: Any = None,
                 counter: Counter | None = None):
        from ..runtime.sampling import initial_latents

        if len(prompts) != len(seeds):
            raise LabError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.pipe, self.prompts, self.guidance = pipe, list(prompts), guidance
        self.cache = prompt_cache
        self.counter = counter if counter is not None else Counter()
        self.cfg = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        if pipe.unet.config.time_cond_proj_dim is not None:
            raise LabError("guidance-embedding UNets (LCM) are not supported by the adaptive loop")
        height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        sched = copy.deepcopy(pipe.scheduler)  # never disturb the pipeline's own scheduler
        sched.set_timesteps(steps, device=pipe.unet.device)
        latents = initial_latents(pipe, seeds, height, width) * sched.init_noise_sigma
        self.start = State(0, latents, sched)
        self.steps = len(sched.timesteps)
        self.extra = pipe.prepare_extra_step_kwargs(None, 0.0)  # eta 0, no generator: what sample() gets

    def embeddings(self) -> Any:
        """Prompt embeddings (``[uncond, cond]`` with guidance), through the shared cache when given; call it
        again under a patch that touches the text encoder (without a cache)."""
        import torch

        from ..runtime.sampling import PromptCache

        cache = self.cache or PromptCache(self.pipe)
        uncond = cache([""])  # first, as in sample(): a fresh cache encodes the same batches
        cond = cache(self.prompts)
        return torch.cat([uncond.expand(len(self.prompts), -1, -1), cond]) if self.cfg else cond

    def run(self, state: State, stop: int, embeds: Any, record: Collection[int] = ()) -> tuple[State, dict]:
        """Denoise from ``state`` to step ``stop``; also return the states after the steps in ``record``.
        ``state`` is left untouched (its scheduler is copied), so several branches can start from it."""
        import torch

        if not state.step <= stop <= self.steps:
            raise LabError(f"cannot run from step {state.step} to {stop} of {self.steps}")
        sched = copy.deepcopy(state.scheduler)
        latents, x0, kept = state.latents, state.x0, {}
        with torch.no_grad():
            for i in range(state.step, stop):
                t = sched.timesteps[i]
                # 1. one batch holds the unconditional and the conditional rows (classifier-free guidance)
                inp = torch.cat([latents] * 2) if self.cfg else latents
                inp = sched.scale_model_input(inp, t)
                # 2. the UNet under the weights the patcher holds now
                noise = self.pipe.unet(inp, t, encoder_hidden_states=embeds, timestep_cond=None,
                                       cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=False)[0]
                self.counter.tick(len(latents))
                # 3. guidance
                if self.cfg:
                    uncond, text = noise.chunk(2)
                    noise = uncond + self.guidance * (text - uncond)
                # 4. the scheduler step; DDIM-like schedulers also predict x₀ (used by lookahead scoring)
                out = sched.step(noise, t, latents, **self.extra, return_dict=True)
                latents, x0 = out.prev_sample, getattr(out, "pred_original_sample", None)
                if i + 1 in record:
                    kept[i + 1] = State(i + 1, latents, copy.deepcopy(sched), x0)
        return State(stop, latents, sched, x0), kept

    def decode(self, latents: Any) -> list[Any]:
        """PIL images of latents, as the pipeline decodes them."""
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * len(image))


# --- branching: one base trajectory, candidates from its prefix -------------------------------------------

@dataclass
class Branches:
    """What :func:`explore` found: base images, and per (t_switch, α, method) the similarity of each candidate
    to the base, rows × vectors. Method ``FULL`` (0) = candidates run to the end; m > 0 = lookahead m steps."""

    pool: list[str]
    steps: int
    base_images: list[Any]
    sims: dict[tuple[int, float, int], Any] = field(default_factory=dict)
    images: dict[tuple[int, float, int], list[list[Any]]] = field(default_factory=dict)  # [vector][row]
    counter: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def explore(lab: Lab, prompts: Sequence[str], seeds: Sequence[int], pool: Sequence[str], switches: Sequence[int],
            alphas: Sequence[float], methods: Sequence[int] = (FULL,), keep_images: bool = False,
            counter: Counter | None = None) -> Branches:
    """Similarities of every candidate θ₀ + α·τᵢ (switched in at step k) to the base, for all k × α × methods.
    The base runs once per batch of rows (its states at every k are kept); each candidate starts from them."""
    import numpy as np

    t0 = time.time()
    pipe, scorer, patcher = lab.pipe, lab.scorer, lab.models.patcher
    vectors = [lab.vector(n) for n in pool]
    T, R, N = lab.steps, len(prompts), len(pool)
    touches_text = any(k.startswith("text_encoder.") for tv in vectors for k in tv.keys())
    out = Branches(list(pool), T, [], counter=counter if counter is not None else Counter())
    lookaheads = sorted({m for m in methods if m != FULL})
    for k in switches:
        for a in alphas:
            for m in methods:
                out.sims[(k, a, m)] = np.ones((R, N), np.float32)
                out.images[(k, a, m)] = [[None] * R for _ in range(N)]

    def feats(images: list[Any]) -> Any:
        return scorer.image_features(images).numpy()

    with lab.models.computing():
        for lo in range(0, R, BATCH):
            rows = slice(lo, min(lo + BATCH, R))
            den = Denoiser(pipe, prompts[rows], seeds[rows], steps=T, guidance=lab.guidance, height=lab.height,
                           width=lab.width, prompt_cache=lab.models.prompt_cache, counter=out.counter)
            # 1. the base, once: the prefix to every t_switch and on to T; states kept where candidates branch
            need = {min(k + m, T) for k in switches for m in lookaheads} | set(switches)
            with patcher.patched([]):
                embeds = den.embeddings()
                final, kept = den.run(den.start, T, embeds, record=need)
            kept[0], kept[T] = den.start, final
            if lookaheads and final.x0 is None:
                raise LabError(f"lookahead needs a scheduler that predicts x0 ({type(pipe.scheduler).__name__} "
                               "does not); use the full method")
            base_imgs = den.decode(final.latents)
            out.base_images.extend(base_imgs)
            ref = {FULL: feats(base_imgs)}  # the paper's reference: the base's final image
            x0_ref = {s: feats(den.decode(kept[s].x0))  # the lookahead's reference: the base's x₀ at that step
                      for s in {min(k + m, T) for k in switches if k < T for m in lookaheads}}
            for k in switches:
                if k >= T:  # never switched: each candidate is the base image (similarity 1, set above)
                    for a in alphas:
                        for m in methods:
                            for j in range(N):
                                out.images[(k, a, m)][j][rows] = base_imgs
                    continue
                stop = T if FULL in methods else min(k + max(lookaheads), T)
                for a in alphas:
                    for j, tv in enumerate(vectors):
                        # 2. a candidate from the shared prefix at step k
                        with patcher.patched([(tv, a)]):
                            emb = den.embeddings() if touches_text else embeds
                            end, at = den.run(kept[k], stop, emb, record={min(k + m, T) for m in lookaheads})
                        # 3. its similarity to the base (same step's x₀ for the lookahead methods)
                        for m in methods:
                            if m == FULL:
                                imgs, f_ref = den.decode(end.latents), ref[FULL]
                            else:
                                s = min(k + m, T)
                                imgs, f_ref = den.decode(at.get(s, end).x0), x0_ref[s]
                            out.sims[(k, a, m)][rows, j] = (feats(imgs) * f_ref).sum(-1)
                            if keep_images:
                                out.images[(k, a, m)][j][rows] = imgs
                log.info("t_switch %d/%d done (%.0f s, %d UNet calls)", k, T, time.time() - t0, out.counter.calls)
    if not keep_images:
        out.images.clear()
    out.seconds = time.time() - t0
    return out


# --- select: one prompt -------------------------------------------------------------------------------------

@dataclass
class Selection:
    """The ranking of a pool for one prompt and what it chose, per probe strength α in ``alphas``:
    ``similarity[α][v]``: per seed, cos(CLIP) of the candidate to the base; ``scores[α][v]``: their mean (lower =
    more relevant); ``candidate_images[α][v]``. ``relevance[v]``: with a calibration, (1 − scores) / the vector's
    usual movement (several α: the :func:`strongest` of them; higher = more relevant); ``ranking``: most relevant
    first."""

    prompts: list[str]
    seeds: list[int]
    pool: list[str]
    steps: int
    t_switch: int
    alphas: tuple[float, ...]
    lookahead: int | None
    similarity: dict[float, dict[str, list[float]]]
    scores: dict[float, dict[str, float]]
    ranking: list[str]
    chosen: list[str]
    lambdas: dict[str, float]
    base_images: list[Any]
    candidate_images: dict[float, dict[str, list[Any]]]
    final_images: list[Any]
    counts: dict[str, int]
    seconds: float
    relevance: dict[str, float] = field(default_factory=dict)  # empty: ranked by similarity (no calibration)

    def rows(self) -> list[dict[str, Any]]:
        """One row per vector, ranked (what ranking.csv holds); with several α the similarity columns name theirs."""
        def col(a: float, seed: int | None = None) -> str:
            return ("similarity" + ("" if len(self.alphas) == 1 else f"_alpha{a:g}")
                    + ("" if seed is None else f"_seed{seed}"))

        return [{"rank": i + 1, "vector": v, **{col(a): self.scores[a][v] for a in self.alphas},
                 "chosen": v in self.chosen, "lambda": self.lambdas.get(v, 0.0),
                 **({"relevance": self.relevance[v]} if self.relevance else {}),
                 **{col(a, s): x for a in self.alphas for s, x in zip(self.seeds, self.similarity[a][v])}}
                for i, v in enumerate(self.ranking)]

    def summary(self) -> dict[str, Any]:
        return {"prompt": self.prompts[0] if len(set(self.prompts)) == 1 else self.prompts, "seeds": self.seeds,
                "steps": self.steps, "t_switch": self.t_switch, "alpha": list(self.alphas),
                "lookahead": self.lookahead, "ranking": self.rows(), "chosen": self.chosen, "counts": self.counts,
                "seconds": self.seconds}


def select(lab: Lab, prompt: str | Sequence[str], pool: Sequence[str], *, t_switch: int, alpha: Strengths,
           seeds: Sequence[int], top_k: int | None = None, threshold: float | None = None,
           lambdas: float | Mapping[str, float] = 1.0, lookahead: int | None = None,
           calibration: Calibrations | None = None,
           on_step: Callable[[int, int], None] | None = None) -> Selection:
    """Rank ``pool`` for ``prompt`` by how far each θ₀ + α·τ (from step ``t_switch`` of ``lab.steps``) moves the
    image, choose the top ``top_k`` and/or those with mean similarity < ``threshold`` (both: both must hold), and
    generate the final images with the chosen vectors at ``lambdas`` (λ = +1 ablates). ``lookahead=m`` scores
    candidates by their predicted x₀ after m steps instead of finishing them (cheaper; see auc_table).
    ``calibration`` (made at the same t_switch, α and method) ranks by relevance, (1 − s) / the vector's usual
    movement, instead of by s; ``threshold`` still reads the mean similarity. Several strengths ``alpha=(0.5, 2)``
    probe every vector at each (from the same prefix) and rank by the :func:`strongest` relevance; they need a
    calibration of each strength, and choose by ``top_k`` (a threshold reads one similarity).
    ``on_step(done, total)`` runs after every denoising step (UNet call); raising from it stops the selection
    with the weights restored (the app's Cancel)."""
    import numpy as np

    t0 = time.time()
    # 0. check everything before any model work
    pool = _check_pool(lab, pool)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise LabError("seeds: give at least one seed")
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(seeds) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise LabError(f"prompt: give one non-empty prompt, or one per seed ({len(seeds)} seeds)")
    t_switch = _check_switch(t_switch, lab.steps)
    alphas = strengths(alpha)
    if top_k is None and threshold is None:
        raise LabError("give top_k and/or threshold (how to choose from the ranking)")
    if top_k is not None and not 1 <= int(top_k) <= len(pool):
        raise LabError(f"top_k: {top_k} is not in 1..{len(pool)} (the pool size)")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise LabError(f"threshold: {threshold} is not a cosine similarity in [-1, 1]")
    if threshold is not None and len(alphas) > 1:
        raise LabError("threshold: it reads one similarity; with several α choose by top_k")
    method = _check_lookahead(lookahead)
    lam = {v: float(lambdas) for v in pool} if not isinstance(lambdas, Mapping) else dict(lambdas)
    missing = [v for v in pool if v not in lam]
    if missing:
        raise LabError(f"lambdas: no λ for {', '.join(missing)}")
    check_lambdas(list(lam.values()), "lambdas")
    cals = calibrations_for(calibration, alphas, pool, t_switch, method)

    # 1–3. base once, candidates (each vector at each α) from the shared prefix, CLIP similarity to the base
    T = lab.steps
    branch = 0 if t_switch >= T else (T - t_switch if method == FULL else min(method, T - t_switch))
    # UNet calls: per batch of seeds the base and every (vector, α) branch, then the final images (one batch ≤ 32)
    total = math.ceil(len(seeds) / BATCH) * (T + len(pool) * len(alphas) * branch) + T
    counter = Counter(on_call=(lambda c: on_step(c.calls, total)) if on_step else None)
    br = explore(lab, prompts, seeds, pool, [t_switch], list(alphas), [method], keep_images=True, counter=counter)
    sims = {a: br.sims[(t_switch, a, method)] for a in alphas}
    similarity = {a: {v: [float(x) for x in sims[a][:, j]] for j, v in enumerate(pool)} for a in alphas}
    score = {a: {v: float(sims[a][:, j].mean()) for j, v in enumerate(pool)} for a in alphas}
    # 4. rank (ties keep pool order) and choose: by similarity, or by calibrated relevance
    relevance = {} if cals is None else dict(zip(pool, strongest(
        [np.array([[score[a][v] for v in pool]]) for a in alphas], cals, pool)[0].tolist()))
    ranking = sorted(pool, key=lambda v: -relevance[v] if relevance else score[alphas[0]][v])
    chosen = ranking[:top_k] if top_k is not None else list(ranking)
    if threshold is not None:
        chosen = [v for v in chosen if score[alphas[0]][v] < threshold]
    # 5. the final images with only the chosen vectors (through lab.generate: same images as the grid)
    combo = [(lab.vector(v), lam[v]) for v in chosen]
    done = counter.calls
    final = lab.generate(prompts, seeds, combo, callback=(lambda _b, i, _n: on_step(done + i, total)) if on_step
                         else None) if combo else list(br.base_images)
    imgs = {a: {v: br.images[(t_switch, a, method)][j] for j, v in enumerate(pool)} for a in alphas}
    return Selection(prompts, seeds, pool, lab.steps, t_switch, alphas, lookahead, similarity, score, ranking, chosen,
                     {v: lam[v] for v in chosen}, br.base_images, imgs, final, br.counter.as_dict(), time.time() - t0,
                     relevance)


# --- ROC AUC (Mann–Whitney U with ties) -------------------------------------------------------------------

def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative) + ½·P(tie): the Mann–Whitney U
    statistic over P·N, from average ranks (ties share their mean rank)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        raise ValueError(f"ROC AUC needs positives and negatives (got {n_pos} and {n_neg})")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                      # 1-based rank of the last member of each tie group
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average rank of each score
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_se(scores: Any, labels: Any, n_boot: int = 1000, seed: int = 0) -> float:
    """Standard error of :func:`roc_auc` over prompts: the standard deviation of the AUC over ``n_boot`` resamples
    of the rows (prompts) with replacement. A prompt's scores for its vectors share one picture, so rows, not
    single scores, are the independent draws. Resamples without a positive or a negative are redrawn."""
    import numpy as np

    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape}: give one row per prompt")
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    while len(aucs) < n_boot:
        rows = rng.integers(0, len(s), len(s))
        if 0 < y[rows].sum() < y[rows].size:
            aucs.append(roc_auc(s[rows], y[rows]))
    return float(np.std(aucs, ddof=1))


# --- the labelled experiment (toy world) ------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """A labelled prompt: which pool vectors it names (relevant) and which control object, if any."""

    prompt: str
    seed: int
    relevant: frozenset[str]
    control: str | None = None


KINDS = (("target", "target"), ("target", "plain"), ("control", "target"), ("control", "plain"))  # (object, style)
NEUTRAL = (("control", "plain"),)  # prompts that name no pool concept: what a calibration is measured on


def world_probes(world: World, pool: Sequence[str], n: int, seed: int = 0,
                 kinds: Sequence[tuple[str, str]] = KINDS) -> list[Probe]:
    """``n`` prompts of a world, cycling through ``kinds`` of (object, style), by default four: target object +
    target style, target object + plain style, control object + target style, control object + plain style
    (``NEUTRAL``: the last alone, prompts that name no pool concept). Targets come from ``pool`` in turn, in a
    seeded order, so that every vector is named about equally often — drawn at random, 48 prompts once named
    no smiley at all; controls from the world's control concepts, "plain" = the anchor of its style concepts;
    other words and templates random, seeded. A vector is relevant iff the prompt names its concept."""
    concepts = {c.name: c for c in world.concepts}
    objs = [c for c in pool if c in concepts and concepts[c].kind == "object"]
    stys = [c for c in pool if c in concepts and concepts[c].kind == "style"]
    if not objs and not stys:
        raise LabError(f"pool {list(pool)} has no toy-world target concept")
    plain = next((c.anchor for c in world.concepts if c.kind == "style"), "plain")
    controls = list(world.control_concepts)
    drawable = [(o, s) for o, s in kinds if (o != "target" or objs) and (s != "target" or stys)]
    if not drawable:
        raise LabError(f"pool {list(pool)}: none of the prompt kinds {list(kinds)} can be drawn")
    rng = random.Random(f"adaptive-{seed}")
    next_obj = itertools.cycle(rng.sample(objs, len(objs)))
    next_sty = itertools.cycle(rng.sample(stys, len(stys)))
    probes = []
    for i in range(n):
        o_kind, s_kind = drawable[i % len(drawable)]
        obj = next(next_obj) if o_kind == "target" else rng.choice(controls)
        sty = next(next_sty) if s_kind == "target" else plain
        words = world.sample_words(rng, object=obj, style=sty)
        prompt = rng.choice(world.prompt_templates).format(**words)
        probes.append(Probe(prompt, seed * 10_000 + i, frozenset({obj, sty} & set(pool)),
                            obj if obj in controls else None))
    return probes


@dataclass(frozen=True)
class Calibration:
    """Each vector's usual movement at one (t_switch, α, method): ``scale[v]`` = the median of 1 − s over prompts
    that name no pool concept. Raw similarities do not compare across vectors: on the toy world an object vector
    moves a neutral picture ~10× as far as a style vector does (it redraws shapes near its anchor; a style vector
    finds no style to change), so a top-k by s picks object vectors for style prompts. ``relevance`` =
    (1 − s) / scale: how many times its usual distance this prompt moves the vector's picture. Within one vector
    the order is unchanged (its own AUC too); across vectors it is what a per-prompt top-k compares. The median,
    not the mean: now and then a vector redraws a neutral picture (1 − s ≈ 0.2 where it is usually ≈ 0.005), and
    two such pictures in 32 triple a mean."""

    t_switch: int
    alpha: float
    method: int
    scale: Mapping[str, float]  # vector -> its usual movement, for every vector calibrated
    n_prompts: int

    @classmethod
    def from_table(cls, table: AucTable, t_switch: int, alpha: float, method: int = FULL) -> Calibration:
        """The calibration of a table's neutral rows (its prompts that name no pool vector)."""
        import numpy as np

        sims = table.sims_at(t_switch, (float(alpha),), method)[0]
        neutral = np.array([not p.relevant for p in table.probes])
        if not neutral.any():
            raise LabError("calibration: no prompt of the table names none of the pool (give neutral prompts)")
        scale = np.median(1.0 - sims[neutral], axis=0)
        return cls(t_switch, float(alpha), method, {v: float(x) for v, x in zip(table.pool, scale)},
                   int(neutral.sum()))

    def check(self, pool: Sequence[str], t_switch: int, alpha: float, method: int) -> None:
        """Refuse a calibration made for other vectors or another (t_switch, α, method): its scales differ."""
        missing = [v for v in pool if v not in self.scale]
        if missing:
            raise LabError(f"calibration: no scale for {', '.join(missing)} (calibrated {', '.join(self.scale)})")
        if (self.t_switch, self.alpha, self.method) != (t_switch, float(alpha), method):
            raise LabError(f"calibration made at t_switch {self.t_switch}, α {self.alpha:g}, "
                           f"{_method_name(self.method)}; used at t_switch {t_switch}, α {alpha:g}, "
                           f"{_method_name(method)}")

    def relevance(self, sims: Any, pool: Sequence[str]) -> Any:
        """(1 − s) / scale for a rows × ``pool`` array of similarities (scales below ``SCALE_FLOOR`` count as it)."""
        import numpy as np

        scale = np.array([max(self.scale[v], SCALE_FLOOR) for v in pool])
        return (1.0 - np.asarray(sims, np.float64)) / scale


Strengths = float | Sequence[float]  # one probe strength α, or several (see strongest)
Calibrations = Calibration | Sequence[Calibration]  # one per strength


def strengths(alpha: Strengths) -> tuple[float, ...]:
    """α as a tuple of probe strengths, checked: one number, or several distinct ones."""
    alphas = list(alpha) if isinstance(alpha, Sequence) and not isinstance(alpha, str) else [alpha]
    if not alphas:
        raise LabError("alpha: give at least one strength")
    return tuple(check_lambdas(alphas, "alpha", distinct=True))


def calibrations_for(calibration: Calibrations | None, alphas: Sequence[float], pool: Sequence[str],
                     t_switch: int, method: int) -> list[Calibration] | None:
    """The calibration of each strength, in the order of ``alphas``, checked against the pool and the cell (None:
    rank by similarity, which only one strength allows: 1 − s at different α does not compare)."""
    if calibration is None:
        if len(alphas) > 1:
            raise LabError(f"α {', '.join(f'{a:g}' for a in alphas)}: several strengths need a calibration of each "
                           "(raw similarities at different α do not compare)")
        return None
    given = [calibration] if isinstance(calibration, Calibration) else list(calibration)
    by_alpha = {c.alpha: c for c in given}
    missing = [a for a in alphas if a not in by_alpha]
    if missing:
        raise LabError(f"calibration: none made at α {', '.join(f'{a:g}' for a in missing)} (made at α "
                       f"{', '.join(f'{a:g}' for a in by_alpha)})")
    for a in alphas:
        by_alpha[a].check(pool, t_switch, a, method)
    return [by_alpha[a] for a in alphas]


def strongest(sims: Sequence[Any], cals: Sequence[Calibration], pool: Sequence[str]) -> Any:
    """Relevance when each vector is probed at several strengths: the largest of its calibrated relevances, one
    rows × ``pool`` similarity array per strength. On the toy world an object vector is best told at a light
    strength (pushed hard it redraws shapes on any prompt), a style vector at a strong one (a light push from
    step T/2 leaves the pattern in place); a vector counts as relevant when at some strength it moves the picture
    many times its usual distance at that strength."""
    import numpy as np

    return np.max([c.relevance(s, pool) for s, c in zip(sims, cals, strict=True)], axis=0)


def neutral_probes(world: World, pool: Sequence[str], n: int, seed: int) -> list[Probe]:
    """``n`` world prompts that name no pool concept (control object, plain style): a calibration's prompts."""
    return world_probes(world, pool, n, seed, kinds=NEUTRAL)


@dataclass
class AucTable:
    """Similarities of every candidate for every labelled prompt, per (t_switch, α, method), and their AUC."""

    pool: list[str]
    steps: int
    probes: list[Probe]
    switches: list[int]
    alphas: list[float]
    methods: list[int]
    branches: Branches

    def labels(self) -> Any:
        import numpy as np

        return np.array([[v in p.relevant for v in self.pool] for p in self.probes])

    def relevance(self, t_switch: int, alpha: Strengths, method: int = FULL,
                  calibration: Calibrations | None = None) -> Any:
        """Rows × pool: 1 − s (the paper's score), or (1 − s) / scale with a calibration; higher = more relevant.
        Several strengths α (each calibrated): the :func:`strongest` relevance over them."""
        alphas = strengths(alpha)
        sims = self.sims_at(t_switch, alphas, method)
        cals = calibrations_for(calibration, alphas, self.pool, t_switch, method)
        return 1.0 - sims[0] if cals is None else strongest(sims, cals, self.pool)

    def sims_at(self, t_switch: int, alphas: Sequence[float], method: int = FULL) -> list[Any]:
        """The rows × pool similarities of each α at (t_switch, method): a LabError naming any cell not measured."""
        missing = [a for a in alphas if (t_switch, a, method) not in self.branches.sims]
        if missing:
            raise LabError(f"(t_switch={t_switch}, alpha={', '.join(f'{a:g}' for a in missing)}, "
                           f"{_method_name(method)}) is not in the table; t_switches {self.switches}, "
                           f"alphas {self.alphas}")
        return [self.branches.sims[(t_switch, a, method)] for a in alphas]

    def auc(self, t_switch: int, alpha: Strengths, method: int = FULL,
            calibration: Calibrations | None = None) -> float:
        return roc_auc(self.relevance(t_switch, alpha, method, calibration), self.labels())

    def auc_se(self, t_switch: int, alpha: Strengths, method: int = FULL,
               calibration: Calibrations | None = None) -> float:
        """Bootstrap standard error of :meth:`auc` over the table's prompts (the calibration held fixed)."""
        return auc_se(self.relevance(t_switch, alpha, method, calibration), self.labels())

    def vector_aucs(self, t_switch: int, alpha: Strengths, method: int = FULL,
                    calibration: Calibrations | None = None) -> dict[str, float]:
        """Each vector's own AUC (its column of relevance alone), for the vectors that some prompts name and
        some do not: which vectors the pooled ranking loses. At one strength a calibration leaves it as it is."""
        y, rel = self.labels(), self.relevance(t_switch, alpha, method, calibration)
        return {v: roc_auc(rel[:, j], y[:, j]) for j, v in enumerate(self.pool) if 0 < y[:, j].sum() < len(y)}

    def rows(self, calibrations: Mapping[tuple[int, float, int], Calibration] | None = None) -> list[dict[str, Any]]:
        """One row per (method, t_switch, α): what auc.csv holds (with ``auc_calibrated`` where a calibration
        of that cell is given)."""
        y = self.labels()
        out = []
        for m in self.methods:
            for k in self.switches:
                for a in self.alphas:
                    s = self.branches.sims[(k, a, m)]
                    cal = (calibrations or {}).get((k, a, m))
                    out.append({"method": _method_name(m), "steps": self.steps, "t_switch": k,
                                "t_switch_frac": round(k / self.steps, 4), "alpha": a, "auc": self.auc(k, a, m),
                                **({"auc_calibrated": self.auc(k, a, m, cal) if cal else math.nan}
                                   if calibrations else {}),
                                "sim_relevant": float(s[y].mean()), "sim_irrelevant": float(s[~y].mean()),
                                "n_relevant": int(y.sum()), "n_irrelevant": int((~y).sum())})
        return out


def auc_table(lab: Lab, t_switches: Sequence[int], alphas: Sequence[float], *, pool: Sequence[str] | None = None,
              n_prompts: int = 16, seed: int = 0, lookaheads: Sequence[int] = (1, 2),
              probes: Sequence[Probe] | None = None) -> AucTable:
    """ROC AUC of candidate similarity for "the prompt names this vector's concept", for every t_switch (steps
    of ``lab.steps``) × α, over ``n_prompts`` labelled toy-world prompts (one seed each; or your ``probes``).
    The base runs once for all; each lookahead m adds a column at no UNet cost (scored on the way)."""
    pool = _check_pool(lab, pool or list(lab.concepts))
    switches, alphas, methods = _grid(lab, t_switches, alphas, lookaheads)
    if probes is None:
        if lab.world is None:
            raise LabError("auc_table needs labelled prompts: pass probes=[Probe(prompt, seed, relevant)] for a "
                           "model without a world")
        if n_prompts < 1:
            raise LabError(f"n_prompts: {n_prompts} < 1")
        probes = world_probes(lab.world, pool, n_prompts, seed)
    probes = list(probes)
    if not any(p.relevant for p in probes):
        raise LabError("no prompt names a pool concept: the AUC is undefined")
    br = explore(lab, [p.prompt for p in probes], [p.seed for p in probes], pool, switches, alphas, methods)
    return AucTable(pool, lab.steps, probes, switches, alphas, methods, br)


def calibrate(lab: Lab, pool: Sequence[str], *, t_switch: int, alpha: float, lookahead: int | None = None,
              n_prompts: int = 16, seed: int = 2, prompts: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, counter: Counter | None = None) -> Calibration:
    """Each pool vector's usual movement at (t_switch, α, lookahead), measured on ``prompts`` that name none of
    the pool (one per seed), or on ``n_prompts`` neutral world prompts (control object, plain style; probe seeds
    ``seed``·10 000 + i, apart from auc_table's and the trade-off's when the seeds differ). Costs what an AUC
    table of that many prompts costs at one (t_switch, α)."""
    cals = calibrations(lab, pool, t_switches=[t_switch], alphas=[alpha],
                        lookaheads=[] if lookahead is None else [lookahead], n_prompts=n_prompts, seed=seed,
                        prompts=prompts, seeds=seeds, counter=counter)
    m = _check_lookahead(lookahead)
    return next(c for (_, _, method), c in cals.items() if method == m)


def calibrations(lab: Lab, pool: Sequence[str], *, t_switches: Sequence[int], alphas: Sequence[float],
                 lookaheads: Sequence[int] = (), n_prompts: int = 16, seed: int = 2,
                 prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 counter: Counter | None = None) -> dict[tuple[int, float, int], Calibration]:
    """:func:`calibrate` for every (t_switch, α, method) of an AUC grid, from one run over the neutral prompts
    (``counter``: its ``on_call`` sees every UNet call, and may raise to stop the run)."""
    pool = _check_pool(lab, pool)
    switches, alphas, methods = _grid(lab, t_switches, alphas, lookaheads)
    if prompts is None:
        if lab.world is None:
            raise LabError("calibrate: give prompts that name none of the pool (no world to draw them from)")
        if n_prompts < 1:
            raise LabError(f"n_prompts: {n_prompts} < 1")
        probes = neutral_probes(lab.world, pool, n_prompts, seed)
    else:
        seeds = list(range(len(prompts))) if seeds is None else [int(x) for x in seeds]
        if not prompts or len(seeds) != len(prompts):
            raise LabError(f"calibrate: {len(prompts)} prompts and {len(seeds)} seeds (give one seed per prompt)")
        probes = [Probe(str(t), x, frozenset()) for t, x in zip(prompts, seeds)]
    br = explore(lab, [p.prompt for p in probes], [p.seed for p in probes], pool, switches, alphas, methods,
                 counter=counter)
    table = AucTable(pool, lab.steps, probes, switches, alphas, methods, br)
    return {key: Calibration.from_table(table, *key) for key in br.sims}


# --- the trade-off against plain addition (paper Fig. 6) --------------------------------------------------

@dataclass
class Tradeoff:
    """Target accuracy (named target beats its anchor; lower = better ablation) and control accuracy (a control
    object is still recognised; higher = less collateral damage) per way of choosing the vectors."""

    t_switch: int
    alphas: tuple[float, ...]  # the probe strength(s) of the selection
    method: int
    rows: list[dict[str, Any]]
    seconds: float
    auc: float = math.nan      # of the table's ranking at (t_switch, α): how well these prompts were ranked
    n_probes: int = 0


def tradeoff(lab: Lab, table: AucTable, *, t_switch: int, alpha: Strengths, method: int = FULL,
             top_ks: Sequence[int] = (1, 2), thresholds: Sequence[float] = (), lam: float = 1.0,
             calibration: Calibrations | None = None) -> Tradeoff:
    """Generate the table's prompts with: the base; all pool vectors added (λ = ``lam`` each); the top-k
    / below-threshold vectors of each prompt's ranking at (t_switch, α) (top-k by calibrated relevance when a
    ``calibration`` is given, by the strongest over several α; thresholds read the similarity of one α); and the
    oracle (exactly the named ones). Toy world only (it needs the anchors and the control objects)."""
    import numpy as np

    t0 = time.time()
    if lab.world is None:
        raise LabError("tradeoff needs a world (control objects and anchors)")
    alphas = strengths(alpha)
    sims = table.sims_at(t_switch, alphas, method)[0]  # the first α's: what thresholds read
    if thresholds and len(alphas) > 1:
        raise LabError("thresholds: they read one similarity; with several α choose by top-k")
    pool, probes = table.pool, table.probes
    ways: dict[str, list[frozenset[str]]] = {"base": [frozenset()] * len(probes),
                                             "all vectors": [frozenset(pool)] * len(probes)}
    rel = table.relevance(t_switch, alphas, method, calibration)
    for k in top_ks:
        ways[f"adaptive top-{k}"] = [frozenset(pool[j] for j in np.argsort(-r, kind="stable")[:k]) for r in rel]
    for thr in thresholds:
        ways[f"adaptive s<{thr:g}"] = [frozenset(v for v, x in zip(pool, s) if x < thr) for s in sims]
    ways["oracle (named only)"] = [p.relevant for p in probes]
    # 1. images per distinct (probe, vector set); the base images come from the table's run
    cache: dict[tuple[int, frozenset[str]], Any] = {(i, frozenset()): im
                                                    for i, im in enumerate(table.branches.base_images)}
    todo: dict[frozenset[str], list[int]] = {}
    for sets in ways.values():
        for i, s in enumerate(sets):
            if (i, s) not in cache:
                todo.setdefault(s, [])
                if i not in todo[s]:
                    todo[s].append(i)
    for s, idx in todo.items():
        combo = [(lab.vector(v), lam) for v in pool if v in s]
        ims = lab.generate([probes[i].prompt for i in idx], [probes[i].seed for i in idx], combo)
        cache.update({(i, s): im for i, im in zip(idx, ims)})
    # 2. CLIP: each named target against its anchor; each control object classified among the world's objects
    scorer = lab.scorer
    rows = []
    for name, sets in ways.items():
        feats = scorer.image_features([cache[(i, s)] for i, s in enumerate(sets)])
        hits: dict[str, list[bool]] = {"object": [], "style": []}
        ctrl, ctrl_plain = [], []  # plain: control prompts naming no pool concept (nothing should change)
        for i, p in enumerate(probes):
            for c in p.relevant:
                kind = lab.kind_of(c)
                sc = scorer.scores(feats[i:i + 1], [scorer.caption(c, kind), scorer.caption(lab.anchor_of(c), kind)])
                hits[kind].append(bool(sc[0, 0] > sc[0, 1]))
            if p.control:
                ctrl.append(scorer.classify(feats[i:i + 1], lab.world.objects, "object")[0] == p.control)
                if not p.relevant:
                    ctrl_plain.append(ctrl[-1])
        both = hits["object"] + hits["style"]
        n_vec = [len(s) for s in sets]
        rows.append({"way": name, "target_accuracy": _mean(both), "target_accuracy_object": _mean(hits["object"]),
                     "target_accuracy_style": _mean(hits["style"]), "control_accuracy": _mean(ctrl),
                     "control_accuracy_unnamed": _mean(ctrl_plain),
                     "mean_vectors": float(np.mean(n_vec)), "n_targets": len(both), "n_control": len(ctrl)})
    return Tradeoff(t_switch, alphas, method, rows, time.time() - t0,
                    table.auc(t_switch, alphas, method, calibration), len(probes))


# --- files ---------------------------------------------------------------------------------------------------

def save_selection(sel: Selection, out: str | Path) -> dict[str, str]:
    """``ranking.csv`` and ``strip.png``: base | candidates, most relevant first | final; one row per seed, and per
    α when several were probed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "ranking.csv", sel.rows())
    several = len(sel.alphas) > 1
    rows = [(i, a) for i in range(len(sel.seeds)) for a in sel.alphas]  # (seed index, α) of each strip row

    def name(v: str) -> str:
        """A candidate's column title: vector (✓ chosen), its similarity at each α, its relevance."""
        sims = "/".join(f"{sel.scores[a][v]:.3f}" for a in sel.alphas)
        r = f"{chr(10) if several else ' '}r={sel.relevance[v]:.1f}" if sel.relevance else ""
        return f"{v}{' ✓' if v in sel.chosen else ''}\ns={sims}{r}"  # 3 short lines when several α share a column

    cols = [("base", [sel.base_images[i] for i, _ in rows]),
            *((name(v), [sel.candidate_images[a][v][i] for i, a in rows]) for v in sel.ranking),
            ("final\n" + ("+".join(sel.chosen) or "none"), [sel.final_images[i] for i, _ in rows])]
    what = f"lookahead {sel.lookahead}" if sel.lookahead else "full"
    how = "lowest CLIP similarity to the base first"
    if sel.relevance:
        how = ("highest relevance first (r = (1 − s) / the vector's usual 1 − s"
               + (", the larger over α)" if several else ")"))
    title = (f"{sel.prompts[0]!r}: t_switch {sel.t_switch}/{sel.steps}, α {', '.join(f'{a:g}' for a in sel.alphas)}, "
             f"{what}\ncandidates ranked: {how}; s = similarity to the base" + (" at each α" if several else "")
             + ", ✓ chosen")
    _strip(out / "strip.png", cols, [f"seed {sel.seeds[i]}" + (f", α {a:g}" if several else "") for i, a in rows],
           title)
    return {"ranking": str(out / "ranking.csv"), "strip": str(out / "strip.png")}


def save_auc(table: AucTable, out: str | Path,
             calibrations: Mapping[tuple[int, float, int], Calibration] | None = None) -> dict[str, str]:
    """``auc.csv``, ``auc.png`` (heatmap per method), ``probes.csv`` and ``similarities.csv`` (every score: to
    recompute an AUC or try a threshold)."""
    import numpy as np

    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"auc": out / "auc.csv", "heatmap": out / "auc.png", "probes": out / "probes.csv"}
    _write_csv(files["auc"], table.rows(calibrations))
    _write_csv(files["probes"], [{"prompt": p.prompt, "seed": p.seed, "relevant": " ".join(sorted(p.relevant)),
                                  "control": p.control or ""} for p in table.probes])
    files["similarities"] = out / "similarities.csv"  # every score, to recompute AUCs or try thresholds
    _write_csv(files["similarities"], [
        {"method": _method_name(m), "t_switch": k, "alpha": a, "probe": i, "vector": v,
         "relevant": v in table.probes[i].relevant, "similarity": float(sims[i, j])}
        for (k, a, m), sims in table.branches.sims.items() for i in range(len(table.probes))
        for j, v in enumerate(table.pool)])
    n_m = len(table.methods)
    fig, axes = plots.figure(1, n_m, size=(1.0 + 0.75 * len(table.alphas) * n_m + 0.8,
                                          1.4 + 0.45 * len(table.switches)))
    for ax, m in zip(np.atleast_1d(axes), table.methods):
        grid = np.array([[table.auc(k, a, m) for a in table.alphas] for k in table.switches])
        im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.8 else "black", fontsize=8)
        ax.set_xticks(range(len(table.alphas)), [f"{a:g}" for a in table.alphas])
        ax.set_yticks(range(len(table.switches)), [f"{k}" for k in table.switches])
        ax.set_xlabel("α")
        ax.set_ylabel(f"t_switch (steps of {table.steps})")
        ax.set_title(_method_name(m), fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="ROC AUC")
    fig.suptitle(f"Adaptive selection: ROC AUC, {len(table.probes)} prompts × {len(table.pool)} vectors",
                 fontsize=10)
    plots.save(fig, files["heatmap"])
    return {k: str(v) for k, v in files.items()}


def save_tradeoff(trade: Tradeoff, table: AucTable, out: str | Path) -> dict[str, str]:
    """``tradeoff.csv``, ``tradeoff.png`` (control vs target accuracy per way) and ``tradeoff_probes.csv``."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"tradeoff": out / "tradeoff.csv", "tradeoff_plot": out / "tradeoff.png",
             "tradeoff_probes": out / "tradeoff_probes.csv"}
    strength = " ".join(f"{a:g}" for a in trade.alphas)
    _write_csv(files["tradeoff"], [{"t_switch": trade.t_switch, "steps": table.steps, "alpha": strength,
                                    "method": _method_name(trade.method), "auc": trade.auc, **r} for r in trade.rows])
    sims = {a: table.branches.sims[(trade.t_switch, a, trade.method)] for a in trade.alphas}
    one = len(trade.alphas) == 1
    _write_csv(files["tradeoff_probes"], [{"prompt": p.prompt, "seed": p.seed, "relevant": " ".join(sorted(p.relevant)),
                                           "control": p.control or "",
                                           **{f"sim_{v}" + ("" if one else f"_alpha{a:g}"): float(sims[a][i, j])
                                              for a in trade.alphas for j, v in enumerate(table.pool)}}
                                          for i, p in enumerate(table.probes)])
    fig, ax = plots.figure(1, 1, size=(5.6, 4.4))
    for i, r in enumerate(trade.rows):
        ax.scatter(r["target_accuracy"], r["control_accuracy"], s=40, color=plots.color(i),
                   label=f"{r['way']} ({r['mean_vectors']:.2f} vectors)")
    ax.set_xlabel("target accuracy (named target beats its anchor; lower is better)", fontsize=8)
    ax.set_ylabel("control accuracy (control object recognised; higher is better)", fontsize=8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{trade.n_probes} prompts; selection at t_switch {trade.t_switch}/{table.steps}, α {strength} "
                 f"({_method_name(trade.method)}, AUC {trade.auc:.2f})", fontsize=8)
    plots.save(fig, files["tradeoff_plot"])
    return {k: str(v) for k, v in files.items()}


def _strip(path: Path, cols: list[tuple[str, list[Any]]], row_names: list[str], title: str) -> None:
    from . import plots

    n_r, n_c = len(row_names), len(cols)
    # Large type: the strip is shown shrunk to the page width (and on projectors).
    fig, axes = plots.figure(n_r, n_c, size=(1.7 * n_c, 1.8 * n_r + 1.1))
    axes = [[axes]] if n_r == n_c == 1 else [axes] if n_r == 1 else [[a] for a in axes] if n_c == 1 else axes
    for c, (name, ims) in enumerate(cols):
        for r in range(n_r):
            ax = axes[r][c]
            ax.imshow(ims[r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=13)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=13)
    fig.suptitle(title, fontsize=13)
    plots.save(fig, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# --- checks and small helpers --------------------------------------------------------------------------------

def _check_pool(lab: Lab, pool: Sequence[str]) -> list[str]:
    pool = list(pool)
    if not pool:
        raise LabError("pool: give at least one vector (concept name)")
    dup = sorted({v for v in pool if pool.count(v) > 1})
    if dup:
        raise LabError(f"pool: {', '.join(dup)} given twice")
    for v in pool:
        lab.concept(v)  # LabError naming the unknown concept
    return pool


def _grid(lab: Lab, t_switches: Sequence[int], alphas: Sequence[float],
          lookaheads: Sequence[int]) -> tuple[list[int], list[float], list[int]]:
    """An AUC grid's t_switches, α values and methods (the full one first), checked, sorted, each once."""
    switches = sorted({_check_switch(k, lab.steps) for k in t_switches})
    alpha_list = sorted(set(check_lambdas(alphas, "alphas")))
    return switches, alpha_list, [FULL, *sorted({_check_lookahead(m) for m in lookaheads} - {FULL})]


def _check_switch(k: Any, steps: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or not 0 <= k <= steps:
        raise LabError(f"t_switch: {k!r} is not a step in 0..{steps} (steps done with the base model)")
    return int(k)


def _check_lookahead(m: Any) -> int:
    if m is None or m == 0:
        return FULL
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise LabError(f"lookahead: {m!r} is not a positive number of steps")
    return m


def fracs_to_steps(fracs: Sequence[float], steps: int) -> list[int]:
    """t_switch fractions of T → steps, refusing fractions that fall between steps."""
    out = []
    for f in fracs:
        k = f * steps
        if not 0 <= f <= 1 or abs(k - round(k)) > 1e-6:
            raise LabError(f"t_switch fraction {f:g} is not a whole step of {steps} (use steps divisible by 5, "
                           "e.g. 10 or 20, for the paper's 0, 0.2, …, 1)")
        out.append(int(round(k)))
    return out


def _method_name(m: int) -> str:
    return "full (paper)" if m == FULL else f"lookahead {m}"


def _mean(xs: Sequence[bool]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


# --- command line -------------------------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "adaptive", help="adaptive vector selection (shared prefix) and its ROC AUC",
        description="Adaptive task-vector selection (multi-concept paper §5). With --prompt: run the base to "
        "--t-switch, branch θ + α·τ for each pool vector from those shared latents, rank the vectors by CLIP "
        "similarity of their image to the base image (lowest = most relevant), choose --top-k / --threshold, and "
        "generate with the chosen ones (λ = +1 ablates); writes DIR/ranking.csv and DIR/strip.png. With --auc: "
        "ROC AUC vs t_switch × α on labelled toy-world prompts (a vector is relevant iff the prompt names its "
        "concept), plus the target/control trade-off of all vectors vs the selected ones (on its own prompts); "
        "writes DIR/auc.csv, auc.png, probes.csv, similarities.csv, tradeoff.csv, tradeoff.png, "
        "tradeoff_probes.csv.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompt", help="the prompt to select vectors for")
    p.add_argument("--pool", nargs="+", help="concept names of the candidate vectors (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (scores are averaged over them)")
    p.add_argument("--t-switch", type=int, help="steps done with the base before switching (default: T/2)")
    p.add_argument("--alpha", type=float, nargs="+", default=[2.0],
                   help="candidate strength α (θ + α·τ; default 2); several (e.g. 0.5 2, with --calibrate): each "
                   "vector is probed at each and ranked by its larger calibrated relevance")
    p.add_argument("--top-k", type=int, help="choose the k most relevant vectors")
    p.add_argument("--threshold", type=float, help="choose vectors with mean similarity below this")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="λ of each chosen vector (default 1)")
    p.add_argument("--lookahead", type=int, help="score candidates by predicted x0 after this many steps")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="rank by (1 − s) / each vector's usual movement, measured on N world prompts that name no "
                   "pool concept (drawn with --prompt-seed + 2); 0 (default): by similarity, as the paper")
    p.add_argument("--steps", type=int, help="denoising steps T (default: world.json's)")
    p.add_argument("--assets", help="toy world folder (default assets/toyworld)")
    g = p.add_argument_group("--auc (toy world)")
    g.add_argument("--auc", action="store_true", help="ROC AUC table + trade-off instead of one prompt")
    g.add_argument("--t-switch-fracs", type=float, nargs="+", default=list(DEFAULT_FRACS),
                   help="t_switch as fractions of T (default 0 .2 .4 .6 .8 1)")
    g.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS), help="α values")
    g.add_argument("--n-prompts", type=int, default=16, help="labelled prompts, one seed each (default 16)")
    g.add_argument("--prompt-seed", type=int, default=0, help="seed of the prompt draw")
    g.add_argument("--lookaheads", type=int, nargs="*", default=[1, 2], help="lookahead columns (free)")
    g.add_argument("--tradeoff-frac", type=float, default=0.4, help="t_switch fraction of the trade-off (0.4)")
    g.add_argument("--tradeoff-alpha", type=float, nargs="+", default=[2.0],
                   help="α of the trade-off (default 2; several, with --calibrate: the two-strength probe)")
    g.add_argument("--tradeoff-prompts", type=int, default=48,
                   help="labelled prompts of the trade-off, drawn with --prompt-seed + 1 (default 48)")
    g.add_argument("--top-ks", type=int, nargs="*", default=[1, 2], help="top-k rules of the trade-off")
    g.add_argument("--thresholds", type=float, nargs="*", default=[], help="threshold rules of the trade-off")
    g.add_argument("--no-tradeoff", action="store_true", help="only the AUC table")
    g.add_argument("--tradeoff-only", action="store_true", help="only the trade-off")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_adaptive, human=print_adaptive)


def cmd_adaptive(args: Any) -> dict[str, Any]:
    if args.steps is not None and args.steps < 1:
        raise LabError(f"--steps: {args.steps} < 1")
    if args.calibrate < 0:
        raise LabError(f"--calibrate: {args.calibrate} < 0 (neutral prompts; 0 = no calibration)")
    try:
        lab = Lab.from_world(args.assets, **({"steps": args.steps} if args.steps else {}))
        if args.auc:
            return _cmd_auc(lab, args)
        if not args.prompt:
            raise LabError("give --prompt (or --auc for the AUC table)")
        pool = args.pool or list(lab.concepts)
        k = lab.steps // 2 if args.t_switch is None else args.t_switch
        cal = None
        if args.calibrate:  # one run over the neutral prompts calibrates every α (of the method used)
            cals = calibrations(lab, pool, t_switches=[k], alphas=args.alpha,
                                lookaheads=[args.lookahead] if args.lookahead else [], n_prompts=args.calibrate,
                                seed=args.prompt_seed + 2)
            cal = [c for c in cals.values() if c.method == _check_lookahead(args.lookahead)]
        sel = select(lab, args.prompt, pool, t_switch=k, alpha=args.alpha, seeds=args.seeds, top_k=args.top_k,
                     threshold=args.threshold, lambdas=args.lam, lookahead=args.lookahead, calibration=cal)
        return {"mode": "select", **sel.summary(), "files": save_selection(sel, args.out)}
    except (ModelError, ClipUnavailable) as e:
        raise SystemExit(f"error: {e}") from None


def _cmd_auc(lab: Lab, args: Any) -> dict[str, Any]:
    t0 = time.time()
    pool = args.pool or list(lab.concepts)
    res: dict[str, Any] = {"mode": "auc", "steps": lab.steps, "pool": pool, "auc": [], "tradeoff": None,
                           "files": {}, "seconds": {}}
    cals: dict[tuple[int, float, int], Calibration] = {}  # the grid's, reused by the trade-off where it has the cell
    if not args.tradeoff_only:
        # 1. the AUC grid: t_switch × α × method on n_prompts labelled prompts
        switches = fracs_to_steps(args.t_switch_fracs, lab.steps)
        table = auc_table(lab, switches, args.alphas, pool=pool, n_prompts=args.n_prompts, seed=args.prompt_seed,
                          lookaheads=args.lookaheads)
        if args.calibrate:
            cals = calibrations(lab, pool, t_switches=switches, alphas=args.alphas, lookaheads=args.lookaheads,
                                n_prompts=args.calibrate, seed=args.prompt_seed + 2)
        res["files"].update(save_auc(table, args.out, cals or None))  # now: the trade-off may take as long again
        res.update(n_prompts=len(table.probes), auc=table.rows(cals or None), counts=table.branches.counter.as_dict())
        res["seconds"]["auc"] = table.branches.seconds
    if not args.no_tradeoff:
        # 2. the trade-off at one point, on its own (fresh, larger) set of prompts
        k = fracs_to_steps([args.tradeoff_frac], lab.steps)[0]
        t1 = time.time()
        ttable = auc_table(lab, [k], args.tradeoff_alpha, pool=pool, n_prompts=args.tradeoff_prompts,
                           seed=args.prompt_seed + 1, lookaheads=())
        cal = None
        if args.calibrate:  # the AUC grid's calibration of each α where it has one, else measured now
            todo = [a for a in args.tradeoff_alpha if (k, float(a), FULL) not in cals]
            if todo:
                cals.update(calibrations(lab, pool, t_switches=[k], alphas=todo, n_prompts=args.calibrate,
                                         seed=args.prompt_seed + 2))
            cal = [cals[(k, float(a), FULL)] for a in args.tradeoff_alpha]
        trade = tradeoff(lab, ttable, t_switch=k, alpha=args.tradeoff_alpha, top_ks=args.top_ks,
                         thresholds=args.thresholds, calibration=cal)
        res["files"].update(save_tradeoff(trade, ttable, args.out))
        res["tradeoff"] = {"t_switch": k, "alpha": list(trade.alphas), "auc": trade.auc, "n_prompts": trade.n_probes,
                           "calibrated": cal is not None,
                           "prompt_seed": args.prompt_seed + 1, "rows": trade.rows}
        res["seconds"]["tradeoff"] = time.time() - t1
    res["seconds"]["total"] = time.time() - t0
    return res


def print_adaptive(res: dict[str, Any]) -> None:
    if res["mode"] == "select":
        sims = [c for c in res["ranking"][0] if c.startswith("similarity") and "_seed" not in c]
        rel = ["relevance"] if "relevance" in res["ranking"][0] else []
        print(text_table(["rank", "vector", *sims, *rel, "chosen"],
                         [[r["rank"], r["vector"], *(r[c] for c in sims + rel), "yes" if r["chosen"] else ""]
                          for r in res["ranking"]]))
        print(f"\nchosen: {', '.join(res['chosen']) or 'none'}; t_switch {res['t_switch']}/{res['steps']}, "
              f"α {', '.join(f'{a:g}' for a in res['alpha'])}; {res['counts']['unet_calls']} UNet calls, "
              f"{res['seconds']:.1f} s")
    else:
        for m in dict.fromkeys(r["method"] for r in res["auc"]):
            rows = [r for r in res["auc"] if r["method"] == m]
            alphas = list(dict.fromkeys(r["alpha"] for r in rows))
            ks = list(dict.fromkeys(r["t_switch"] for r in rows))
            for col in ("auc", "auc_calibrated"):
                if col not in rows[0]:
                    continue
                cell = {(r["t_switch"], r["alpha"]): r[col] for r in rows}
                print(f"ROC AUC{', calibrated' if col != 'auc' else ''}, {m} (rows t_switch of {res['steps']}, "
                      "columns α)")
                print(text_table(["t_switch", *(f"α={a:g}" for a in alphas)], [[k, *(cell[k, a] for a in alphas)]
                                                                            for k in ks]))
                print()
        if res["tradeoff"]:
            t = res["tradeoff"]
            print(f"trade-off: {t['n_prompts']} prompts, selection at t_switch {t['t_switch']}/{res['steps']}, "
                  f"α {', '.join(f'{a:g}' for a in t['alpha'])}{', calibrated ranking' if t['calibrated'] else ''} "
                  f"(AUC there {t['auc']:.3f})")
            print(text_table(["way", "target acc", "object", "style", "control acc", "no target named", "vectors"],
                         [[r["way"], r["target_accuracy"], r["target_accuracy_object"], r["target_accuracy_style"],
                           r["control_accuracy"], r["control_accuracy_unnamed"], r["mean_vectors"]]
                          for r in t["rows"]]))
        print(f"\n{res['seconds']['total']:.0f} s; wrote {', '.join(Path(f).name for f in res['files'].values())}")
