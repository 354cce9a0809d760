"""Train the shapes LVLM from scratch on CPU: ``python -m minilocal.toy.train --out DIR``.

Every training sequence is one image of the shapes world followed by up to ``questions``
"where is EXPR ." questions about different objects, each answered by the referent's centre
cell (``r7 c12``); the loss is the cross-entropy of the answer tokens only. Nothing in the
loss mentions attention: localization heads, if any, EMERGE (the head search finds them
later with the paper's criteria, :mod:`minilocal.toy.evaluate`).

Training is deterministic for a seed and a thread count (both recorded in the report): the
batch of step s holds train items s * batch .. s * batch + batch - 1 of the world, and the
initialisation is seeded. During training a probe measures localization on fixed items of
the selection split: the share of each head's image attention that falls inside the GT box,
and pointing (the head's argmax cell lies in the box).

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import lvlm
from . import world as W
from .checkpoint import Checkpoint


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in the training report).

    Attributes:
        spec: Model sizes.
        world: World geometry.
        steps: Optimiser steps.
        batch: Images per step.
        questions: Questions per image (distinct referents; fewer when the scene has fewer).
        lr: Peak learning rate (AdamW).
        warmup: Linear warm-up steps, then cosine decay to ``lr * final_lr``.
        final_lr: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay (matrices only).
        clip: Gradient-norm clip.
        seed: Seed of the initialisation (the data are fixed by the world's train split).
        threads: torch threads (results depend on it; recorded).
        probe_every: Steps between localization probes (0: only at the end).
        probe_items: Selection items used by the probe.
        start_index: First train item (to continue a run on fresh data).
        device: "cpu" (the shipped model; deterministic for seed and threads) or "cuda"
            (faster, for experiments; not bit-for-bit reproducible).
        curriculum: Steps of easier scenes first: step s < curriculum draws scenes of 1 to
            ``1 + s * max_objects // curriculum`` objects (single objects first: "where"
            can be learnt before "which"); 0: no curriculum.
        init: Folder of a saved shapes LVLM to start from (a second stage of training;
            its sizes must match ``spec``), None: random initialisation.
        plant: Heads (layer, head) whose last-token attention is TRAINED onto the referent
            by an extra loss (PLANTED localization heads; empty: none, the heads that the
            search finds then emerge from the answer loss alone). A planted model says so
            in its config (``minilocal_planted_heads``) and report; see
            ``experiments/LOG.md`` for why this option exists.
        plant_weight: Weight of the planting loss (cross-entropy between the referent's
            mask, pooled to the grid, and the head's attention over all keys).
        plant_sharpen: Weight of the SHARPENING term of the planting loss (0: none): for
            each planted head and query, the sum over image cells more than one cell away
            from the referent of ``max(0, log a - log(SHARPEN_FLOOR / n_image))``, i.e. of
            how far above a quarter of uniform attention each distant cell gets. The
            cross-entropy alone barely pushes on a few percent of attention left on
            another object (its gradient on a cell is the cell's attention), yet the
            paper's pseudo mask (smoothed sum > its mean) turns such a residue into
            foreground and the box swallows the other object (``experiments/LOG.md``
            section 13). Use it on a model whose planted heads already localize (the
            shipped model's last stage): from scratch it pushed their attention off the
            image onto the text (LOG section 13).
        text_steps: Steps of STAGE 0, language pre-training before the image stage
            (:func:`text_stage`; 0: none). A real LVLM starts from a pre-trained language
            model whose last token already sums up the sentence; this stage gives the
            shapes decoder that ability (see ``experiments/LOG.md`` section 9).
        text_batch: Sequences per stage-0 step.
        background_dropout: Share of each image's BACKGROUND cells (grid cells no object
            touches) hidden from the decoder's attention at each image step, drawn afresh
            per image and step (0: none; inference never hides anything). Meant to keep
            idle heads from parking on a fixed background patch (LLaVA's park on text
            tokens); measured, it did not move them (``experiments/LOG.md`` section 12).
            The shipped model's last three stages used 0.5.
    """

    spec: lvlm.ModelSpec = field(default_factory=lvlm.ModelSpec)
    world: W.WorldConfig = field(default_factory=W.WorldConfig)
    steps: int = 1000
    batch: int = 16
    questions: int = 4
    lr: float = 2e-3
    warmup: int = 50
    final_lr: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    threads: int = 1
    probe_every: int = 100
    probe_items: int = 48
    start_index: int = 0
    device: str = "cpu"
    curriculum: int = 0
    init: str | None = None
    plant: tuple[tuple[int, int], ...] = ()
    plant_weight: float = 1.0
    plant_sharpen: float = 0.0
    text_steps: int = 0
    text_batch: int = 64
    background_dropout: float = 0.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (linear warm-up, cosine decay)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def world_at(step: int, cfg: TrainConfig) -> W.WorldConfig:
    """The world of step ``step``: the configured one, or an easier one during the curriculum."""
    if step >= cfg.curriculum:
        return cfg.world
    most = min(cfg.world.max_objects, 1 + step * cfg.world.max_objects // cfg.curriculum)
    return replace(cfg.world, min_objects=1, max_objects=most)


def pooled_mask(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[H, W] bool mask -> [h * w] share of each grid cell covered, normalised to sum 1."""
    from ..geometry import Geometry

    cells = Geometry.resize(mask.shape[::-1], grid).image_mask_to_grid(mask).ravel()
    return cells / max(cells.sum(), 1e-12)


def background_cells(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[n, H, W] bool object masks -> [h * w] bool: grid cells that no object touches."""
    return pooled_mask(masks.any(0), grid) <= 0


def hide_background(batch: dict, backgrounds: list[np.ndarray], share: float,
                    image_token_id: int, rng: np.random.Generator) -> None:
    """Zero ``attention_mask`` on a random ``share`` of each row's background image cells.

    Args:
        batch: Encoded batch (image tokens in grid order, one image per row); changed in place.
        backgrounds: Per row, [h * w] bool background cells (:func:`background_cells`).
        share: Probability that a background cell is hidden.
        image_token_id: The model's image token.
        rng: Random generator (the draw is part of the run's seed).
    """
    if share <= 0:
        return
    for b, bg in enumerate(backgrounds):
        pos = torch.nonzero(batch["input_ids"][b] == image_token_id).flatten()
        if len(pos) != len(bg):
            raise ValueError(f"row {b}: {len(pos)} image tokens for a grid of {len(bg)} cells")
        hide = bg & (rng.random(len(bg)) < share)
        batch["attention_mask"][b, pos[torch.from_numpy(hide)]] = 0


def make_batch(step: int, cfg: TrainConfig, processor, targets: bool = False):
    """The batch of step ``step``: train items ``start + step * batch ...`` of the world.

    With ``cfg.background_dropout``, some background cells of each image are hidden from
    attention (:func:`hide_background`, drawn from the seed, the step and the item).

    Args:
        targets: Also return, per image and question, the referent's mask pooled to the
            grid (:func:`pooled_mask`), for planting.

    Returns:
        (model inputs with labels, number of answers in the batch), plus the targets when
        asked.
    """
    images, questions, maps, backgrounds = [], [], [], []
    world = world_at(step, cfg)
    for b in range(cfg.batch):
        index = cfg.start_index + step * cfg.batch + b
        s = W.shapes_sample("train", index, world, questions=cfg.questions)
        size = (s.scene.image.shape[1], s.scene.image.shape[0])
        qa = [
            (expr, lvlm.answer(s.scene.box(t), size, cfg.spec.grid))
            for t, expr in zip(s.targets, s.exprs)
        ]
        images.append(s.scene.image)
        questions.append(qa)
        if targets:
            maps.append([pooled_mask(s.scene.masks[t], cfg.spec.grid)
                         for t in s.targets[: len(qa)]])
        if cfg.background_dropout > 0:
            backgrounds.append(background_cells(s.scene.masks, cfg.spec.grid))
    batch = lvlm.encode_questions(processor, images, questions, layout=cfg.spec.layout)
    if cfg.background_dropout > 0:
        rng = np.random.default_rng([cfg.seed, cfg.start_index + step * cfg.batch])
        image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        hide_background(batch, backgrounds, cfg.background_dropout, image_token_id, rng)
    batch = {k: v.to(cfg.device) for k, v in batch.items()}
    n = sum(len(q) for q in questions)
    return (batch, n, maps) if targets else (batch, n)


_WORKER: dict = {}


def _worker_init(spec) -> None:
    torch.set_num_threads(1)
    _WORKER["processor"] = lvlm.build_processor(spec)


def _worker_batch(step: int, cfg: TrainConfig, targets: bool):
    """A batch rendered in a worker process, as numpy arrays (no tensor crosses the pipe)."""
    made = make_batch(step, replace(cfg, device="cpu"), _WORKER["processor"], targets)
    return ({k: v.numpy() for k, v in made[0].items()},) + tuple(made[1:])


def batches(first: int, cfg: TrainConfig, processor, targets: bool, workers: int = 0):
    """The batches of steps ``first .. cfg.steps - 1`` in order (:func:`make_batch`).

    With ``workers`` > 0 they are rendered ahead by that many processes (2 x workers batches
    in flight at most). The batch of a step depends on the step only, so the batches, and
    the trained weights, are the same whatever the number of workers; only the time
    changes (rendering the scenes, not the model, bounds a step on a GPU: LOG section 2).
    """
    if workers <= 0:
        for step in range(first, cfg.steps):
            yield make_batch(step, cfg, processor, targets)
        return
    import multiprocessing as mp
    from collections import deque

    with mp.get_context("spawn").Pool(workers, _worker_init, (cfg.spec,)) as pool:
        pending: deque = deque()
        steps = iter(range(first, cfg.steps))
        for step in steps:
            pending.append(pool.apply_async(_worker_batch, (step, cfg, targets)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            arrays, *rest = pending.popleft().get()
            nxt = next(steps, None)
            if nxt is not None:
                pending.append(pool.apply_async(_worker_batch, (nxt, cfg, targets)))
            yield ({k: torch.from_numpy(v).to(cfg.device) for k, v in arrays.items()}, *rest)


#: First train-split index of stage 0's expressions (far from the image stage's items).
TEXT_STAGE_START = 10**8
#: Scenes whose expressions stage 0 draws from.
TEXT_STAGE_POOL = 2000


def text_stage(model, processor, cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Stage 0: language pre-training of the decoder on text alone.

    Each sequence is ``<s> SYSTEM where is E1 . w1 where is E2 . w2 ...`` with the
    expressions of one train scene and no image; each ``w`` is one word of its expression
    (not "the"), drawn at random, and the loss is on the ``w`` only. The best guess at a
    "." is then the expression's bag of words: the decoder learns to GATHER the
    expression into the query position. Without the 576 image tokens (which take nearly
    all of the attention of a freshly initialised head) this is learnt in a few hundred
    steps; inside the image stage it is not (``experiments/LOG.md`` section 9).

    Args:
        model: The shapes LVLM (trained in place; its vision tower gets no gradient).
        processor: Its processor.
        cfg: ``text_steps``, ``text_batch``, ``lr``, ``seed``, ``world``, ``questions``.

    Returns:
        The stage's log (step, loss), every 10 steps.
    """
    tok = processor.tokenizer
    rng = np.random.default_rng([cfg.seed, 0])
    params = [p for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    prefix = tok(lvlm.SYSTEM)["input_ids"]
    pool = [W.shapes_sample("train", TEXT_STAGE_START + i, cfg.world, questions=cfg.questions)
            .exprs for i in range(TEXT_STAGE_POOL)]
    log = []
    bar = tqdm(range(cfg.text_steps), disable=not progress, desc="stage 0 (text)",
               dynamic_ncols=True)
    for step in bar:
        seqs, labs = [], []
        for _ in range(cfg.text_batch):
            ids, lab = list(prefix), [-100] * len(prefix)
            for expr in pool[int(rng.integers(len(pool)))]:
                q = tok(f"{lvlm.QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
                words = [w for w in expr.split() if w != "the"]
                a = tok(words[int(rng.integers(len(words)))], add_special_tokens=False)["input_ids"]
                ids += q + a
                lab += [-100] * len(q) + a
            seqs.append(ids)
            labs.append(lab)
        batch = lvlm.pad_sequences(seqs, labs, tok.pad_token_id)
        loss = model(**{k: v.to(cfg.device) for k, v in batch.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        value = float(loss.detach())
        bar.set_postfix(loss=f"{value:.3f}")
        if step % 10 == 0 or step == cfg.text_steps - 1:
            log.append({"step": step, "loss": round(value, 5)})
    return log


#: Attention a planted head may leave on a cell far from the referent, as a share of uniform
#: attention (1 / number of image cells), before the sharpening term counts it.
SHARPEN_FLOOR = 0.25


def sharpen_term(logp: torch.Tensor, target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sharpening term of the planting loss, summed over queries (:class:`TrainConfig`).

    Args:
        logp: [Q, n_image] log attention of one head on the image cells (-inf: hidden).
        target: [Q, n_image] referent maps (pooled masks); cells more than one cell away
            from a cell with target > 0 are "far".
        grid: (h, w) with h * w = n_image.

    Returns:
        Sum over queries and far cells of ``max(0, logp - log(SHARPEN_FLOOR / n_image))``.
    """
    q, n = logp.shape
    near = torch.nn.functional.max_pool2d((target > 0).float().view(q, 1, *grid), 3, 1, 1)
    far = near.view(q, n) == 0
    excess = torch.clamp(logp - math.log(SHARPEN_FLOOR / n), min=0.0)
    return torch.where(far & torch.isfinite(logp), excess, torch.zeros_like(excess)).sum()


class Planter:
    """The planting loss: chosen heads' attention from each answer's query onto the referent.

    Hooks the chosen layers' attention modules to keep their inputs, then recomputes the
    chosen heads' attention rows at the query positions (the "." before each answer) with
    the module's own projections and rotary embedding: the same numbers the model attends
    with, differentiable, without switching the model to eager attention.
    """

    def __init__(self, model, heads: tuple[tuple[int, int], ...], image_token_id: int,
                 sharpen: float = 0.0, grid: tuple[int, int] | None = None):
        if sharpen and grid is None:
            raise ValueError("the sharpening term needs the image grid: pass grid=(h, w)")
        self.heads = [tuple(h) for h in heads]
        self.image_token_id = image_token_id
        self.sharpen, self.grid = sharpen, grid
        self.last_sharpen = 0.0  # the sharpening term of the last loss (per query)
        self.layers = model.model.language_model.layers
        self.saved: dict[int, tuple] = {}
        self.hooks = [
            self.layers[layer].self_attn.register_forward_pre_hook(self._keep(layer),
                                                                   with_kwargs=True)
            for layer in sorted({layer for layer, _ in self.heads})
        ]

    def _keep(self, layer: int):
        def hook(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.saved[layer] = (hidden, kwargs["position_embeddings"])
        return hook

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def loss(self, batch: dict, maps: list[list[np.ndarray]]) -> torch.Tensor:
        """Mean cross-entropy between each referent map and the head's attention row (plus
        ``sharpen`` times the mean sharpening term, :func:`sharpen_term`)."""
        from transformers.models.llama.modeling_llama import rotate_half

        ids, labels = batch["input_ids"], batch["labels"]
        sup = labels != -100
        queries = (~sup[:, :-1]) & sup[:, 1:]  # [B, T-1]: the "." before each answer
        image = ids[0] == self.image_token_id  # [T] (the same layout in every row)
        total, sharp, count = 0.0, 0.0, 0
        projected = {}  # layer -> rotated q, k of all its heads: once per layer
        for layer, head in self.heads:
            attn = self.layers[layer].self_attn
            if layer not in projected:
                hidden, (cos, sin) = self.saved[layer]
                B, T, _ = hidden.shape
                q_all = attn.q_proj(hidden).view(B, T, -1, attn.head_dim)  # [B, T, H, d]
                k_all = attn.k_proj(hidden).view(B, T, -1, attn.head_dim)  # [B, T, KV, d]
                cs, sn = cos[:, :, None], sin[:, :, None]
                projected[layer] = (q_all * cs + rotate_half(q_all) * sn,
                                    k_all * cs + rotate_half(k_all) * sn)
            q_all, k_all = projected[layer]
            B, T = q_all.shape[:2]
            kv = head // (attn.config.num_attention_heads // attn.config.num_key_value_heads)
            q, k = q_all[:, :, head], k_all[:, :, kv]  # [B, T, d]
            for b in range(B):
                pos = torch.nonzero(queries[b]).flatten()  # [Q]
                if len(pos) == 0:
                    continue
                logits = q[b, pos] @ k[b].T * attn.scaling  # [Q, T]
                keys = torch.arange(T, device=logits.device)
                hidden_keys = (keys[None, :] > pos[:, None]) | (batch["attention_mask"][b] == 0)[None, :]
                logits = logits.masked_fill(hidden_keys, float("-inf"))
                logp = torch.log_softmax(logits, -1)[:, image]  # [Q, n_image]
                target = torch.as_tensor(np.stack(maps[b][: len(pos)]), dtype=logp.dtype,
                                         device=logp.device)
                # hidden keys have logp = -inf and target 0: leave them out of the sum
                total = total - (target * logp.masked_fill(target == 0, 0.0)).sum(-1).sum()
                if self.sharpen:
                    sharp = sharp + sharpen_term(logp, target, self.grid)
                count += len(pos)
        self.saved.clear()
        self.last_sharpen = (float(sharp.detach()) if torch.is_tensor(sharp) else 0.0) / max(count, 1)
        return (total + self.sharpen * sharp) / max(count, 1)


def cells_in_box(box, geometry, margin: float = 0.0) -> np.ndarray:
    """[h, w] bool: grid cells whose centre lies inside ``box`` (xyxy image pixels).

    The cells the probe counts as "on the referent" (its in-box share and pointing).

    Args:
        box: xyxy box in image pixels.
        geometry: The image's grid geometry.
        margin: Widen the box by this many grid cells on every side first.
    """
    x0, y0, x1, y1 = geometry.image_box_to_grid(box)
    h, w = geometry.grid
    ys, xs = (np.arange(h) + 0.5)[:, None], (np.arange(w) + 0.5)[None, :]
    return ((xs >= x0 - margin) & (xs <= x1 + margin)
            & (ys >= y0 - margin) & (ys <= y1 + margin))


@torch.no_grad()
def greedy_answer(model, processor, inputs: dict) -> tuple[str, str]:
    """The model's greedy answer to a prepared prompt: the row token predicted at the last
    position, then the column token predicted after that row."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    tok = processor.tokenizer
    row_id = model(**inputs).logits[0, -1].argmax().view(1, 1)
    ids = torch.cat([inputs["input_ids"], row_id], 1)
    col_id = model(**{**inputs, "input_ids": ids,
                      "attention_mask": torch.ones_like(ids)}).logits[0, -1].argmax()
    return tok.convert_ids_to_tokens(int(row_id)), tok.convert_ids_to_tokens(int(col_id))


@torch.no_grad()
def probe(model, processor, items) -> dict:
    """Localization of every head at the query position on fixed items.

    Args:
        model: The shapes LVLM.
        processor: Its processor.
        items: GroundingItems (with boxes) to probe.

    Returns:
        Dict with ``in_box`` [L, H] (mean share of the head's image attention inside the GT
        box), ``pointing`` [L, H] (share of items whose argmax cell is in the box), ``s_img``
        [L, H], ``box_share`` (mean share of grid cells inside the box: the in_box of a
        uniform map), ``answer`` (share of exact row+column answers, greedy).
    """
    from ..adapters import get_adapter

    was_training = model.training
    model.eval()
    adapter = get_adapter(model, processor)
    in_box, pointing, s_img, share, correct = [], [], [], [], []
    for it in items:
        attn, prep = adapter.attention(it.image, it.expr)  # [L, H, h, w]
        L, H, h, w = attn.shape
        inside = cells_in_box(it.box, prep.geometry)  # [h, w]
        mass = attn.sum((-1, -2))  # [L, H]
        in_box.append((attn * inside).sum((-1, -2)) / np.maximum(mass, 1e-12))
        flat = attn.reshape(L, H, -1).argmax(-1)  # [L, H]
        pointing.append(inside.reshape(-1)[flat])
        s_img.append(mass)
        share.append(inside.mean())
        truth = lvlm.answer(it.box, it.image.size, (h, w)).split()
        row, col = greedy_answer(model, processor, prep.inputs)
        correct.append(row == truth[0] and col == truth[1])
    model.train(was_training)
    return {
        "in_box": np.mean(in_box, 0),
        "pointing": np.mean(pointing, 0),
        "s_img": np.mean(s_img, 0),
        "box_share": float(np.mean(share)),
        "answer": float(np.mean(correct)),
    }


def _probe_summary(p: dict) -> dict:
    in_box = p["in_box"]
    L, H = in_box.shape
    order = np.argsort(-in_box.ravel())[:5]
    return {
        "answer": round(p["answer"], 4),
        "box_share": round(p["box_share"], 4),
        "in_box_mean": round(float(in_box.mean()), 4),
        "in_box_top": [
            {"head": f"L{i // H}H{i % H}", "in_box": round(float(in_box.ravel()[i]), 4),
             "pointing": round(float(p["pointing"].ravel()[i]), 4),
             "s_img": round(float(p["s_img"].ravel()[i]), 4)}
            for i in order
        ],
        "in_box": np.round(in_box, 4).tolist(),
        "pointing": np.round(p["pointing"], 4).tolist(),
        "s_img": np.round(p["s_img"], 4).tolist(),
    }


def train(cfg: TrainConfig, out: str | Path | None = None, progress: bool = True,
          checkpoint_every: int = 100, command: str | None = None, workers: int = 0) -> dict:
    """Train a shapes LVLM from scratch; save it (and its report) to ``out``.

    An interrupted run RESUMES: with ``out``, the run saves its state (model, optimiser,
    logs) to ``out/checkpoint.pt`` after stage 0 and every ``checkpoint_every`` steps; the
    same command run again continues from there, and gives the same weights as an
    uninterrupted run (the batch of a step depends on the step only). The file is removed
    when the run ends. An interrupted stage 0 starts again (it takes minutes).

    Args:
        cfg: The run's configuration.
        out: Folder for ``save_pretrained`` (model, tokenizer, processor) and
            ``training_report.json``; None keeps nothing on disk.
        progress: Show a tqdm progress bar.
        checkpoint_every: Steps between checkpoints (0: none; only with ``out``).
        command: The command line to record in the report (default: this process's).
        workers: Processes that render the batches ahead (0: none, in this process). The
            weights do not depend on it (:func:`batches`); it is not part of the config.

    Returns:
        The training report (config, loss curve, probes, time, threads, versions; with
        ``cfg.init``, the report of the model it starts from as ``init_report``, so that a
        chain of stages is recorded in one file).

    Book: ``book/06_your_model.ipynb``.
    """
    if not 0 <= cfg.background_dropout < 1:
        raise ValueError(f"--background-dropout {cfg.background_dropout}: pass a share in "
                         "[0, 1) (0 hides nothing)")
    if cfg.plant_sharpen < 0:
        raise ValueError(f"--plant-sharpen {cfg.plant_sharpen}: pass a weight >= 0 (0: none)")
    ckpt = Checkpoint(out, asdict(cfg), checkpoint_every)
    torch.set_num_threads(cfg.threads)
    processor = lvlm.build_processor(cfg.spec)
    model = lvlm.build_model(cfg.spec, processor, seed=cfg.seed)
    if ckpt.state is not None:
        model.load_state_dict(ckpt.state["model"])
    elif cfg.init is not None:
        start, _ = lvlm.load_toy(cfg.init)
        if lvlm.spec_of(start) != cfg.spec:
            raise ValueError(
                f"--init {cfg.init}: its sizes {lvlm.spec_of(start)} differ from {cfg.spec}; "
                "pass the same sizes (or none: the defaults)")
        model.load_state_dict(start.state_dict())
    model = model.to(cfg.device)
    model.train()
    if ckpt.state is not None:
        text_log = ckpt.state["report"]["text_stage_log"]
    else:
        text_log = text_stage(model, processor, cfg, progress) if cfg.text_steps else []
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    probe_items = [W.shapes_item("selection", i, cfg.world) for i in range(cfg.probe_items)]
    planter = None
    if cfg.plant:
        n_layers, n_heads = cfg.spec.layers, cfg.spec.heads
        for layer, head in cfg.plant:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(f"--plant L{layer}H{head}: the model has {n_layers} layers x "
                                 f"{n_heads} heads; name heads inside it")
        planter = Planter(model, cfg.plant, model.config.image_token_id,
                          sharpen=cfg.plant_sharpen, grid=cfg.spec.grid)
    report: dict = {
        "config": asdict(cfg),
        "command": command or " ".join([Path(sys.executable).name, "-m", "minilocal.toy.train"]
                                       + sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "text_stage_log": text_log,
        "log": [],
        "probes": [],
    }
    if cfg.init is not None and (Path(cfg.init) / "training_report.json").is_file():
        # the stage this run continues, with its own earlier stages: the whole chain
        report["init_report"] = json.loads((Path(cfg.init) / "training_report.json").read_text())
    first, extra = ckpt.resume(opt, report, ("log", "probes", "init_report"), cfg.steps)
    run_loss, run_acc = extra.get("run_loss"), extra.get("run_acc")
    if ckpt.state is None:
        ckpt.save(0, model, opt, report)  # after stage 0
    bar = tqdm(range(first, cfg.steps), initial=first, total=cfg.steps, disable=not progress,
               desc="train", dynamic_ncols=True)
    stream = batches(first, cfg, processor, planter is not None, workers)
    for step, made in zip(bar, stream):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch, maps = made[0], made[-1]
        out_ = model(**batch)
        loss = out_.loss
        plant_loss = None
        if planter is not None:
            plant_loss = planter.loss(batch, maps)
            loss = loss + cfg.plant_weight * plant_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        with torch.no_grad():
            lab = batch["labels"][:, 1:]
            pred = out_.logits[:, :-1].argmax(-1)
            sup = lab != -100
            acc = float((pred[sup] == lab[sup]).float().mean())
        loss_value = float(out_.loss.detach())
        run_loss = loss_value if run_loss is None else 0.95 * run_loss + 0.05 * loss_value
        run_acc = acc if run_acc is None else 0.95 * run_acc + 0.05 * acc
        bar.set_postfix(loss=f"{run_loss:.3f}", tok_acc=f"{run_acc:.3f}")
        if step % 10 == 0 or step == cfg.steps - 1:
            report["log"].append(
                {"step": step, "loss": round(loss_value, 5), "token_acc": round(acc, 4),
                 "lr": lr_at(step, cfg), "elapsed_s": round(ckpt.elapsed(), 1),
                 **({} if plant_loss is None else
                    {"plant_loss": round(float(plant_loss.detach()), 5)}),
                 **({"plant_sharpen_term": round(planter.last_sharpen, 4)}
                    if cfg.plant_sharpen else {})}
            )
        last = step == cfg.steps - 1
        if last or (cfg.probe_every and step > 0 and step % cfg.probe_every == 0):
            p = probe(model, processor, probe_items)
            summary = {"step": step + 1, "elapsed_s": round(ckpt.elapsed(), 1),
                       **_probe_summary(p)}
            report["probes"].append(summary)
            top = summary["in_box_top"][0]
            tqdm.write(
                f"step {step + 1}: answer {summary['answer']:.3f}  in-box mean "
                f"{summary['in_box_mean']:.3f} (uniform {summary['box_share']:.3f})  best "
                f"{top['head']} {top['in_box']:.3f} pointing {top['pointing']:.3f}"
            )
        if ckpt.due(step, cfg.steps):
            ckpt.save(step + 1, model, opt, report, run_loss=run_loss, run_acc=run_acc)
    report["train_seconds"] = round(ckpt.elapsed(), 1)
    if planter is not None:
        planter.remove()
        model.config.minilocal_planted_heads = [list(h) for h in cfg.plant]
    model.eval()
    model.to("cpu")
    model.config.minilocal_world = asdict(cfg.world)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "training_report.json").write_text(json.dumps(report, indent=1))
        ckpt.finish()
    report["model"] = model
    report["processor"] = processor
    return report


def _parse(argv: list[str] | None) -> tuple[TrainConfig, str | None, int, int]:
    """(config, out folder, checkpoint interval, render workers) from the command line."""
    cfg = TrainConfig()
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.toy.train",
        description="Train the shapes LVLM from scratch (CPU).",
    )
    ap.add_argument("--out", default=None, help="output folder (save_pretrained)")
    ap.add_argument("--init", default=None, help="start from this saved model (second stage)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="steps between checkpoints in OUT (an interrupted run resumes when "
                         "the same command is run again; 0: none; default: %(default)s)")
    for f in ("steps", "batch", "questions", "warmup", "seed", "threads", "probe_every",
              "probe_items", "start_index", "curriculum", "text_steps", "text_batch"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(cfg, f))
    for f in ("lr", "final_lr", "weight_decay", "clip", "background_dropout"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(cfg, f))
    for f in ("layers", "heads", "kv_heads", "hidden", "intermediate", "vision_hidden",
              "image_size", "patch_size"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(cfg.spec, f))
    ap.add_argument("--patch-init-std", type=float, default=cfg.spec.patch_init_std)
    ap.add_argument("--rope-theta", type=float, default=cfg.spec.rope_theta)
    ap.add_argument("--positions", default=cfg.spec.positions, choices=list(lvlm.POSITION_CODES))
    ap.add_argument("--layout", default=cfg.spec.layout, choices=list(lvlm.PROMPT_TEMPLATES))
    ap.add_argument("--device", default=cfg.device, help="cpu (default) or cuda")
    ap.add_argument("--plant", default="", help="heads to PLANT, e.g. L3H2,L5H6 (an extra "
                    "loss trains their attention onto the referent; default: none)")
    ap.add_argument("--plant-weight", type=float, default=cfg.plant_weight)
    ap.add_argument("--plant-sharpen", type=float, default=cfg.plant_sharpen,
                    help="weight of the planting loss's sharpening term (attention left far "
                         "from the referent; default: %(default)s, none)")
    ap.add_argument("--world", default="shapes", choices=list(W.WORLDS),
                    help="the world to train on: shapes (the shipped model's), wide (flat and "
                         "patterned fills, small to large objects, 64-200 px pictures), drawn "
                         "(flat circles and squares as a user draws them), easy (shapes "
                         "without relations, distractors or twins) or crowded (5-8 smaller "
                         "objects); default: %(default)s")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes that render the batches ahead (0: none); the weights do not "
                         "depend on it")
    ap.add_argument("--texture", action=argparse.BooleanOptionalAction, default=None,
                    help="draw each shape kind with its own texture (world.TEXTURES); default: "
                         "as the --world preset (on for shapes and wide, off for drawn)")
    a = ap.parse_args(argv)
    if a.workers < 0:
        ap.error(f"--workers {a.workers}: pass 0 (render in this process) or more")
    spec = replace(
        cfg.spec, layout=a.layout, patch_init_std=a.patch_init_std,
        positions=a.positions, rope_theta=a.rope_theta, **{f: getattr(a, f) for f in ("layers", "heads", "kv_heads", "hidden",
                                                "intermediate", "vision_hidden", "image_size",
                                                "patch_size")}
    )
    from ..selection import parse_head

    plant = tuple(parse_head(h) for h in a.plant.split(",") if h.strip())
    cfg = replace(
        cfg, spec=spec, device=a.device, world=(W.WORLDS[a.world] if a.texture is None
                                      else replace(W.WORLDS[a.world], texture=a.texture)),
        init=a.init,
        plant=plant, plant_weight=a.plant_weight, plant_sharpen=a.plant_sharpen,
        **{f: getattr(a, f) for f in ("steps", "batch", "questions", "warmup", "seed", "threads",
                                      "probe_every", "probe_items", "start_index", "curriculum",
                                      "text_steps", "text_batch", "lr",
                                      "final_lr", "weight_decay", "clip",
                                      "background_dropout")},
    )
    return cfg, a.out, a.checkpoint_every, a.workers


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see ``--help``)."""
    cfg, out, checkpoint_every, workers = _parse(argv)
    report = train(cfg, out, checkpoint_every=checkpoint_every, workers=workers)
    last = {k: v for k, v in (report["probes"][-1] if report["probes"] else {}).items()
            if k not in ("in_box", "pointing", "s_img")}
    print(json.dumps({"train_seconds": report["train_seconds"], "final_probe": last}, indent=1))


if __name__ == "__main__":
    main()
