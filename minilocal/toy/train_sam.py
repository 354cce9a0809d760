"""Train the shapes SAM on CPU: ``python -m minilocal.toy.train_sam --out DIR --seed 0``.

SAM is used here as the RES step uses it (:mod:`minilocal.segmentation`): its prompt is the
box of the localization heads (the hull of their smoothed attention, so NOISY and often too
large, snapped to the LVLM's 4-px grid cells), optionally with their coarse pseudo mask as
the low-res mask prompt. Training draws exactly such prompts around every object of a
shapes scene (2-4 objects, so a box often covers parts of a neighbour):

* box (:func:`jitter_box`): with probability ``p_exact`` the tight GT box; otherwise each
  side moves OUTWARD by ``g * side length``, g ~ Normal(``grow_mean``, ``grow_std``)
  clipped to [``grow_min``, ``grow_max``] (drawn per side; negative g cuts into the object),
  then, with probability ``p_snap``, outward onto the ``snap_cell``-px grid; clipped to
  the image.
* mask prompt (:func:`coarse_mask`, with probability ``p_mask``): a stand-in for the heads'
  pseudo mask. The GT mask is area-pooled to ``coarse_grid`` x ``coarse_grid`` cells (with
  probability ``p_leak`` plus a random neighbour's pooled mask times U(0.3, 0.9): attention
  that leaks onto a distractor), Gaussian-blurred (sigma ~ U(``blur_min``, ``blur_max``) cells),
  divided by its maximum and thresholded at t ~ U(``thr_min``, ``thr_max``); the cells are
  upsampled to pixels (nearest). With probability ``p_soft`` the blurred map itself is
  given as a soft mask instead. It enters SAM through
  :func:`minilocal.segmentation.sam_mask_prompt` (logit 10), as at inference.
* wide box (with probability ``p_wide``, only when a mask prompt is given): the box is the
  hull of the jittered box and that neighbour's GT box, as when the heads' attention spills
  onto a distractor. The box alone is then ambiguous; the mask prompt says which object is
  meant (so the optional mask prompt of ``SamRefiner.refine`` carries information).

The loss is SAM's: on the masks at image resolution (``Sam.postprocess_masks`` of the low-res
logits, as at inference), 20 x focal (alpha 0.25, gamma 2) + dice; SAM's single-mask output
(token 0) and the MINIMUM over its three multimask candidates (tokens 1-3) both count; plus
the MSE between each of the 4 predicted IoUs and the IoU that mask really has.

Deterministic for a seed and a thread count: step s uses the scenes of train items
``start_index + s * batch ...`` and prompt draws from ``numpy.random.default_rng([seed, s])``;
the initialisation is seeded. :func:`evaluate` scores a trained SAM on the HELD-OUT split
through the real ``SamRefiner`` API (never used for tuning; a validation probe during training
uses the "selection" split).

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from .. import metrics
from ..segmentation import import_segment_anything, sam_mask_prompt
from . import sam as S
from . import world as W
from .checkpoint import Checkpoint


# =============================================================================== prompts
@dataclass(frozen=True)
class PromptConfig:
    """The distribution of training prompts (see the module docstring).

    Attributes:
        p_exact: Probability that the box is the tight GT box.
        grow_mean: Mean outward move of each box side, as a fraction of the box's side.
        grow_std: Its standard deviation.
        grow_min: Least move (negative: the side cuts into the object).
        grow_max: Largest move.
        p_snap: Probability that a jittered box is snapped outward onto the grid.
        snap_cell: Grid cell in pixels (the shapes LVLM: 96 px / 24 cells = 4).
        p_mask: Probability that a mask prompt is given with the box.
        coarse_grid: Cells per side of the coarse mask (the LVLM's grid, 24).
        p_leak: Probability that the coarse mask also covers part of a neighbour.
        blur_min: Least blur of the coarse mask, in cells.
        blur_max: Largest blur.
        thr_min: Least threshold (fraction of the blurred map's maximum).
        thr_max: Largest threshold.
        p_soft: Probability that the mask prompt is the soft blurred map, not a binary one.
        p_wide: Probability that, with a mask prompt, the box also covers a neighbour.

    Book: ``book/05_grounding.ipynb``.
    """

    p_exact: float = 0.2
    grow_mean: float = 0.08
    grow_std: float = 0.1
    grow_min: float = -0.1
    grow_max: float = 0.4
    p_snap: float = 0.5
    snap_cell: int = 4
    p_mask: float = 0.5
    coarse_grid: int = 24
    p_leak: float = 0.2
    blur_min: float = 0.5
    blur_max: float = 1.5
    thr_min: float = 0.25
    thr_max: float = 0.6
    p_soft: float = 0.3
    p_wide: float = 0.3


def jitter_box(box, image_hw: tuple[int, int], rng: np.random.Generator,
               cfg: PromptConfig = PromptConfig(), exact: float | None = None) -> np.ndarray:
    """A noisy, mostly enlarged copy of a GT box, like the heads' boxes.

    Args:
        box: [4] xyxy GT box in pixels.
        image_hw: (H, W) of the image (the result is clipped to it).
        rng: Random generator (consumed).
        cfg: The distribution.
        exact: Probability of returning the GT box unchanged (default ``cfg.p_exact``).

    Returns:
        [4] float64 xyxy box inside the image, with x1 > x0 and y1 > y0.

    Book: ``book/05_grounding.ipynb``.
    """
    b = np.asarray(box, dtype=np.float64).copy()
    H, W_ = image_hw
    if rng.random() < (cfg.p_exact if exact is None else exact):
        return b
    w, h = b[2] - b[0], b[3] - b[1]
    g = np.clip(rng.normal(cfg.grow_mean, cfg.grow_std, 4), cfg.grow_min, cfg.grow_max)
    out = b + g * np.array([-w, -h, w, h])
    if rng.random() < cfg.p_snap:
        c = cfg.snap_cell
        out = np.array([np.floor(out[0] / c) * c, np.floor(out[1] / c) * c,
                        np.ceil(out[2] / c) * c, np.ceil(out[3] / c) * c])
    out = np.clip(out, 0, [W_, H, W_, H])
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:  # cut away: fall back to the GT box
        return b
    return out


def _pool(mask: np.ndarray, grid: int) -> np.ndarray:
    """[H, W] -> [grid, grid] area fraction (H, W multiples of grid)."""
    H, W_ = mask.shape
    return mask.reshape(grid, H // grid, grid, W_ // grid).mean(axis=(1, 3))


def pooled_mask(mask: np.ndarray, grid: int = 24) -> np.ndarray:
    """The baseline mask: area-pool to ``grid`` x ``grid``, keep cells >= half covered, upsample.

    Args:
        mask: [H, W] bool (H and W multiples of ``grid``).
        grid: Cells per side.

    Returns:
        [H, W] bool.

    Book: ``book/05_grounding.ipynb``.
    """
    H, W_ = mask.shape
    cells = _pool(mask.astype(np.float64), grid) >= 0.5
    return np.kron(cells, np.ones((H // grid, W_ // grid), dtype=bool)).astype(bool)


def coarse_mask(mask: np.ndarray, rng: np.random.Generator, cfg: PromptConfig = PromptConfig(),
                neighbour: np.ndarray | None = None) -> np.ndarray:
    """A coarse, blurred stand-in for the heads' pseudo mask of one object.

    Args:
        mask: [H, W] bool GT mask (H, W multiples of ``cfg.coarse_grid``).
        rng: Random generator (consumed).
        cfg: The distribution.
        neighbour: [H, W] bool mask of another object the attention may leak onto, or None.

    Returns:
        [H, W] bool (binary prompt) or float64 in [0, 1] (soft prompt).

    Book: ``book/05_grounding.ipynb``.
    """
    H, W_ = mask.shape
    g = cfg.coarse_grid
    cells = _pool(mask.astype(np.float64), g)  # [g, g]
    leak = rng.random() < cfg.p_leak
    weight = rng.uniform(0.3, 0.9)
    if leak and neighbour is not None:
        cells = cells + weight * _pool(neighbour.astype(np.float64), g)
    sigma = rng.uniform(cfg.blur_min, cfg.blur_max)
    blurred = gaussian_filter(cells, sigma, mode="constant", truncate=3.0)
    blurred = blurred / max(blurred.max(), 1e-12)
    thr = rng.uniform(cfg.thr_min, cfg.thr_max)
    soft = rng.random() < cfg.p_soft
    up = np.ones((H // g, W_ // g))
    if soft:
        return np.clip(np.kron(blurred, up), 0.0, 1.0)
    return np.kron(blurred > thr, up).astype(bool)


def hull(a, b) -> np.ndarray:
    """[4] smallest xyxy box that holds boxes ``a`` and ``b``.

    Book: ``book/05_grounding.ipynb``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])


def object_prompts(scene, k: int, rng: np.random.Generator, cfg: PromptConfig = PromptConfig(),
                   exact: float | None = None, mask: float | None = None,
                   wide: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One training prompt for object ``k`` of a scene: (box, mask prompt or None).

    Draws, in this order: the jittered box; whether a mask prompt is given; a random
    neighbour (leak candidate of the coarse mask, and the object a wide box also covers);
    the coarse mask; whether the box is widened over that neighbour.

    Args:
        scene: A :class:`minilocal.toy.world.Scene`.
        k: The object.
        rng: Random generator (consumed).
        cfg: The distribution.
        exact, mask, wide: Overrides of ``cfg.p_exact``, ``cfg.p_mask``, ``cfg.p_wide``.

    Returns:
        (box [4] xyxy pixels, [H, W] mask prompt (bool or float) or None).

    Book: ``book/05_grounding.ipynb``.
    """
    hw = scene.masks.shape[1:]
    box = jitter_box(scene.box(k), hw, rng, cfg, exact=exact)
    if rng.random() >= (cfg.p_mask if mask is None else mask):
        return box, None
    others = [j for j in range(len(scene.objects)) if j != k]
    j = others[int(rng.integers(len(others)))] if others else None
    cm = coarse_mask(scene.masks[k], rng, cfg, None if j is None else scene.masks[j])
    if j is not None and rng.random() < (cfg.p_wide if wide is None else wide):
        box = hull(box, scene.box(j))
    return box, cm


# =============================================================================== model pass
def decode_batch(sam, embeddings: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor,
                 mask_prompts: torch.Tensor | None = None, has_mask: torch.Tensor | None = None):
    """SAM's prompt encoder + mask decoder for many prompts over a batch of images.

    ``MaskDecoder.predict_masks`` takes ONE image with several prompts; this is the same
    computation with each prompt pointing at its own image of the batch (used for training).

    Args:
        sam: A ``segment_anything.modeling.Sam``.
        embeddings: [B, C, e, e] image embeddings (``sam.image_encoder`` output).
        image_index: [N] int64, the image of each prompt.
        boxes: [N, 4] xyxy boxes in SAM's frame (after ``ResizeLongestSide.apply_boxes``).
        mask_prompts: [N, m, m] mask-prompt logits (rows without a prompt are ignored), or None.
        has_mask: [N] bool, which prompts have a mask prompt (None: all when ``mask_prompts``
            is given).

    Returns:
        (low-res mask logits [N, 4, m, m], predicted IoU [N, 4]); index 0 is the single-mask
        output, 1-3 the multimask candidates.

    Book: ``book/05_grounding.ipynb``.
    """
    pe, md = sam.prompt_encoder, sam.mask_decoder
    N = boxes.shape[0]
    sparse, dense = pe(points=None, boxes=boxes, masks=None)  # [N, 2, C], [N, C, e, e]
    if mask_prompts is not None:
        if has_mask is None:
            has_mask = torch.ones(N, dtype=torch.bool)
        idx = torch.nonzero(has_mask).flatten()
        if len(idx):
            dense = dense.clone()
            dense[idx] = pe._embed_masks(mask_prompts[idx][:, None])  # [n, C, e, e]
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(N, -1, -1), sparse], dim=1)
    src = embeddings[image_index] + dense  # [N, C, e, e]
    pos = pe.get_dense_pe().expand(N, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + md.num_mask_tokens, :]
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # [N, C/8, 4e, 4e]
    hyper = torch.stack(
        [md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(md.num_mask_tokens)],
        dim=1,
    )  # [N, 4, C/8]
    b, c, h, w = up.shape
    masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)  # [N, 4, 4e, 4e]
    return masks, md.iou_prediction_head(iou_token_out)


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha=0.25, gamma=2.0) -> torch.Tensor:
    """Sigmoid focal loss, mean over pixels: [N, C, H, W] -> [N, C]."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss on sigmoid probabilities: [N, C, H, W] -> [N, C]."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def sam_loss(masks: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
             focal_weight: float = 20.0) -> tuple[torch.Tensor, dict]:
    """SAM's training loss for masks at image resolution.

    Args:
        masks: [N, 4, H, W] mask logits (0: single-mask output, 1-3: multimask).
        iou_pred: [N, 4] predicted IoUs.
        target: [N, H, W] float GT masks (0/1).
        focal_weight: Weight of the focal loss against dice (SAM: 20 : 1).

    Returns:
        (scalar loss, figures: loss parts and the IoU of the single and best multimask output).

    Book: ``book/05_grounding.ipynb``.
    """
    t = target[:, None].expand_as(masks)
    per = focal_weight * _focal(masks, t) + _dice(masks, t)  # [N, 4]
    single = per[:, 0]
    multi = per[:, 1:].min(dim=1).values
    with torch.no_grad():
        pred = masks > 0
        inter = (pred & (t > 0.5)).flatten(2).sum(-1).float()
        union = (pred | (t > 0.5)).flatten(2).sum(-1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))  # [N, 4]
    iou_loss = F.mse_loss(iou_pred, iou)
    loss = single.mean() + multi.mean() + iou_loss
    return loss, {
        "single": float(single.detach().mean()), "multi": float(multi.detach().mean()),
        "iou_mse": float(iou_loss.detach()),
        "iou_single": float(iou[:, 0].mean()), "iou_best": float(iou[:, 1:].max(1).values.mean()),
    }


# =============================================================================== data
@dataclass
class Batch:
    """One training batch: B images, N prompts (every object of every image).

    Book: ``book/05_grounding.ipynb``.
    """

    images: torch.Tensor  # [B, 3, S, S] preprocessed (normalised, padded)
    image_index: torch.Tensor  # [N]
    boxes: torch.Tensor  # [N, 4] in SAM's frame
    mask_prompts: torch.Tensor  # [N, m, m] logits (zeros where has_mask is False)
    has_mask: torch.Tensor  # [N] bool
    targets: torch.Tensor  # [N, H, W] float
    image_hw: tuple[int, int]
    input_hw: tuple[int, int]


def make_batch(sam, scenes: list, rng: np.random.Generator, prompts: PromptConfig,
               exact: float | None = None, mask: float | None = None,
               wide: float | None = None) -> Batch:
    """Prompts around every object of ``scenes`` (all of one image size).

    Args:
        sam: The model (for its preprocessing and sizes).
        scenes: :class:`minilocal.toy.world.Scene` objects.
        rng: Random generator of the prompts (consumed).
        prompts: Their distribution.
        exact, mask, wide: Overrides of ``prompts.p_exact``, ``p_mask``, ``p_wide``.

    Returns:
        The batch.

    Book: ``book/05_grounding.ipynb``.
    """
    import_segment_anything()  # first: it supplies torchvision stand-ins where needed
    from segment_anything.utils.transforms import ResizeLongestSide

    img_size = int(sam.image_encoder.img_size)
    m = int(sam.prompt_encoder.mask_input_size[0])
    tf = ResizeLongestSide(img_size)
    images, index, boxes, mprompts, has, targets = [], [], [], [], [], []
    hw = scenes[0].image.shape[:2]
    for b, scene in enumerate(scenes):
        if scene.image.shape[:2] != hw:
            raise ValueError("all scenes of a batch must have one image size")
        resized = tf.apply_image(scene.image)  # [h, w, 3] uint8, as SamPredictor.set_image
        images.append(torch.as_tensor(resized).permute(2, 0, 1).float())
        for k in range(len(scene.objects)):
            gt = scene.masks[k]
            box, cm = object_prompts(scene, k, rng, prompts, exact=exact, mask=mask, wide=wide)
            boxes.append(tf.apply_boxes(box[None], hw)[0])
            if cm is not None:
                mprompts.append(sam_mask_prompt(cm, img_size, m))
            else:
                mprompts.append(np.zeros((m, m), np.float32))
            has.append(cm is not None)
            index.append(b)
            targets.append(gt)
    input_hw = tuple(int(v) for v in images[0].shape[1:])
    x = sam.preprocess(torch.stack(images))  # normalise, pad to the square
    return Batch(
        images=x,
        image_index=torch.as_tensor(index, dtype=torch.int64),
        boxes=torch.as_tensor(np.stack(boxes), dtype=torch.float32),
        mask_prompts=torch.as_tensor(np.stack(mprompts)),
        has_mask=torch.as_tensor(has, dtype=torch.bool),
        targets=torch.as_tensor(np.stack(targets), dtype=torch.float32),
        image_hw=tuple(hw), input_hw=input_hw,
    )


def forward_batch(sam, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks at image resolution [N, 4, H, W] (logits) and predicted IoUs [N, 4].

    Book: ``book/05_grounding.ipynb``.
    """
    emb = sam.image_encoder(batch.images)  # [B, C, e, e]
    low, iou = decode_batch(sam, emb, batch.image_index, batch.boxes, batch.mask_prompts,
                            batch.has_mask)
    return sam.postprocess_masks(low, batch.input_hw, batch.image_hw), iou


# =============================================================================== training
@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in the training report).

    Attributes:
        spec: Model sizes.
        prompts: Prompt distribution.
        world: World geometry.
        steps: Optimiser steps.
        batch: Images per step (every object of an image is a prompt: 2-4 per image).
        lr: Peak learning rate (AdamW).
        warmup: Linear warm-up steps, then cosine decay to ``lr * final_lr``.
        final_lr: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay (matrices only).
        clip: Gradient-norm clip.
        seed: Seed of the initialisation and of the prompt draws.
        threads: torch threads (results depend on it; recorded).
        val_every: Steps between validation probes on the selection split (0: only at the end).
        val_items: Selection scenes of the probe.
        eval_items: Held-out items scored at the end (0: no final evaluation).
        start_index: First train item.
        storage_dtype: "float16" or "float32": dtype of the saved weights.

    Book: ``book/05_grounding.ipynb``.
    """

    spec: S.SamSpec = field(default_factory=S.SamSpec)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    world: W.WorldConfig = field(default_factory=W.WorldConfig)
    steps: int = 1400
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 100
    final_lr: float = 0.05
    weight_decay: float = 0.05
    clip: float = 1.0
    seed: int = 0
    threads: int = 1
    val_every: int = 200
    val_items: int = 64
    eval_items: int = 500
    start_index: int = 0
    storage_dtype: str = "float16"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (linear warm-up, cosine decay).

    Book: ``book/05_grounding.ipynb``.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + np.cos(np.pi * min(t, 1.0))))


def _scene(split: str, index: int, world: W.WorldConfig) -> W.Scene:
    return W.sample_scene(W.item_rng(split, index), world)


#: Validation settings: (name, p_exact, p_mask, p_wide).
VALIDATION = (("gt_box", 1.0, 0.0, 0.0), ("jitter", 0.0, 0.0, 0.0),
              ("jitter_mask", 0.0, 1.0, 0.0), ("wide_mask", 0.0, 1.0, 1.0))


@torch.no_grad()
def validate(sam, cfg: TrainConfig) -> dict:
    """mIoU of the single-mask output on the selection split (every object of each scene).

    Prompt settings: GT box; jittered box; jittered box + coarse mask prompt; a box widened
    over a neighbour + the mask prompt (draws seeded by ``[seed, 10**6]``, the same at
    every probe).

    Book: ``book/05_grounding.ipynb``.
    """
    was = sam.training
    sam.eval()
    scenes = [_scene("selection", i, cfg.world) for i in range(cfg.val_items)]
    out = {}
    for name, exact, mask, wide in VALIDATION:
        rng = np.random.default_rng([cfg.seed, 10**6])
        ious = []
        for i in range(0, len(scenes), 16):
            batch = make_batch(sam, scenes[i : i + 16], rng, cfg.prompts, exact=exact, mask=mask,
                               wide=wide)
            masks, _ = forward_batch(sam, batch)
            pred = (masks[:, 0] > 0).numpy()
            ious += [metrics.mask_iou(p, g) for p, g in zip(pred, batch.targets.numpy() > 0.5)]
        out[name] = round(metrics.miou(ious), 4)
    sam.train(was)
    return out


def train(cfg: TrainConfig, out: str | Path | None = None, progress: bool = True,
          checkpoint_every: int = 100) -> dict:
    """Train a shapes SAM from scratch; save it, evaluate it on held-out items.

    An interrupted run RESUMES: with ``out``, the run saves its state to
    ``out/checkpoint.pt`` every ``checkpoint_every`` steps, and the same command run again
    continues from there to the weights of an uninterrupted run (the batch and prompts of a
    step depend on the step only). The file is removed when the run's report is written.

    Args:
        cfg: The run's configuration.
        out: Folder for the weights, config and ``training_report.json`` (None: not saved;
            the held-out evaluation then runs on the in-memory model).
        progress: Show a tqdm progress bar.
        checkpoint_every: Steps between checkpoints (0: none; only with ``out``).

    Returns:
        The training report (config, loss curve, validation probes, time, held-out figures);
        ``report["sam"]`` is the model (in eval mode).

    Book: ``book/05_grounding.ipynb``.
    """
    ckpt = Checkpoint(out, asdict(cfg), checkpoint_every)
    torch.set_num_threads(cfg.threads)
    sam = S.build_sam(cfg.spec, seed=cfg.seed)
    if ckpt.state is not None:
        sam.load_state_dict(ckpt.state["model"])
    sam.train()
    decay = [p for n, p in sam.named_parameters() if p.dim() >= 2 and "pos" not in n]
    no_decay = [p for n, p in sam.named_parameters() if not (p.dim() >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
    )
    report: dict = {
        "config": asdict(cfg),
        "command": " ".join(["python", "-m", "minilocal.toy.train_sam"] + sys.argv[1:])
        if Path(sys.argv[0]).stem == "train_sam" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "parameters": sum(p.numel() for p in sam.parameters()),
        "log": [],
        "validation": [],
    }
    start, extra = ckpt.resume(opt, report, ("log", "validation"), cfg.steps)
    run = extra.get("run")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc="train_sam", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = float(lr_at(step, cfg))  # a Python float: checkpoints load weights-only
        first = cfg.start_index + step * cfg.batch
        scenes = [_scene("train", first + i, cfg.world) for i in range(cfg.batch)]
        batch = make_batch(sam, scenes, np.random.default_rng([cfg.seed, step]), cfg.prompts)
        masks, iou_pred = forward_batch(sam, batch)
        loss, parts = sam_loss(masks, iou_pred, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), cfg.clip)
        opt.step()
        cur = {"loss": float(loss.detach()), **parts}
        run = cur if run is None else {k: 0.95 * run[k] + 0.05 * v for k, v in cur.items()}
        bar.set_postfix(loss=f"{run['loss']:.3f}", iou=f"{run['iou_single']:.3f}")
        if step % 10 == 0 or step == cfg.steps - 1:
            report["log"].append({"step": step, "lr": lr_at(step, cfg),
                                  "elapsed_s": round(ckpt.elapsed(), 1),
                                  "prompts": int(len(batch.boxes)),
                                  **{k: round(v, 5) for k, v in cur.items()}})
        last = step == cfg.steps - 1
        if cfg.val_items and (last or (cfg.val_every and step > 0 and step % cfg.val_every == 0)):
            v = {"step": step + 1, "elapsed_s": round(ckpt.elapsed(), 1), **validate(sam, cfg)}
            report["validation"].append(v)
            tqdm.write(f"step {step + 1}: selection mIoU " +
                       "  ".join(f"{k} {v[k]:.4f}" for k, *_ in VALIDATION))
        if ckpt.due(step, cfg.steps):
            ckpt.save(step + 1, sam, opt, report, run={k: float(v) for k, v in run.items()})
    report["train_seconds"] = round(ckpt.elapsed(), 1)
    sam.eval()
    if out is not None:
        out = Path(out)
        dtype = {"float16": torch.float16, "float32": torch.float32}[cfg.storage_dtype]
        S.save_sam(sam, cfg.spec, out, dtype=dtype)
        report["weights_bytes"] = (out / S.WEIGHTS_NAME).stat().st_size
        sam = S.load_shapes_sam(out)  # evaluate what was saved (storage dtype included)
    if cfg.eval_items:
        from ..segmentation import SegmentAnythingRefiner

        refiner = SegmentAnythingRefiner(sam)
        report["heldout"] = evaluate(refiner, n=cfg.eval_items, seed=cfg.seed,
                                     prompts=cfg.prompts, world=cfg.world, progress=progress)
        report["timing"] = timing(refiner)
    if out is not None:
        (out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
        ckpt.finish()
    report["sam"] = sam
    return report


# =============================================================================== evaluation
#: The evaluated settings: name -> (box, mask prompt, multimask). Boxes: "gt" (tight GT box),
#: "jitter" (:func:`jitter_box` with p_exact = 0) or "wide" (the hull of the jittered box and
#: a random neighbour's box); mask prompt: :func:`coarse_mask`.
SETTINGS: dict[str, tuple[str, bool, bool]] = {
    "sam_gt_box": ("gt", False, False),
    "sam_gt_box_multimask": ("gt", False, True),
    "sam_jitter_box": ("jitter", False, False),
    "sam_jitter_box_multimask": ("jitter", False, True),
    "sam_jitter_box_mask_prompt": ("jitter", True, False),
    "sam_gt_box_mask_prompt": ("gt", True, False),
    "sam_wide_box": ("wide", False, False),
    "sam_wide_box_multimask": ("wide", False, True),
    "sam_wide_box_mask_prompt": ("wide", True, False),
}
#: Baselines without SAM: the box filled as a mask; the coarse prompt itself (> 0.5);
#: the GT mask area-pooled to 24 x 24 and upsampled (:func:`pooled_mask`).
BASELINES: tuple[str, ...] = ("gt_box_as_mask", "jitter_box_as_mask", "wide_box_as_mask",
                              "coarse_prompt_as_mask", "pooled24_gt_mask")


def _box_mask(box: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the box."""
    H, W_ = hw
    ys, xs = np.arange(H) + 0.5, np.arange(W_) + 0.5
    return ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]


def evaluate(refiner, split: str = "heldout", n: int = 500, start: int = 0, seed: int = 0,
             prompts: PromptConfig = PromptConfig(), world: W.WorldConfig | None = None,
             settings: tuple[str, ...] | None = None, progress: bool = False) -> dict:
    """mIoU and cIoU of SAM's mask for the referents of shapes items, next to baselines.

    For item i of ``split`` (its referent; the other objects of the scene are distractors)
    the prompts are drawn from ``numpy.random.default_rng([seed, 7, i])`` by
    :func:`object_prompts` with p_exact = 0, p_mask = 1, p_wide = 1: a jittered box, a
    coarse mask (leaking onto a random neighbour with probability ``p_leak``), and the wide
    box over that neighbour (the jittered box itself when the scene has one object). Every
    SAM call goes through
    ``refiner.refine`` (the real code path of the RES step).

    Args:
        refiner: A :class:`~minilocal.segmentation.SamRefiner` (either backend).
        split: World split ("heldout" for the figures; never tune on it).
        n: Items ``start .. start + n - 1``.
        start: First item.
        seed: Seed of the prompt draws.
        prompts: Prompt distribution (the training one by default).
        world: World geometry (default: the shipped world).
        settings: Names from :data:`SETTINGS` to run (default: all).
        progress: Show a progress bar.

    Returns:
        ``{"n", "split", "seed", "miou": {name: value}, "ciou": {name: value},
        "seconds_per_item"}`` over the chosen SAM settings and all :data:`BASELINES`.

    Book: ``book/05_grounding.ipynb``.
    """
    from PIL import Image

    names = tuple(SETTINGS) if settings is None else tuple(settings)
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        from ..errors import InputError

        raise InputError(f"unknown evaluation settings {unknown}", f"use names from {list(SETTINGS)}.")
    ious: dict[str, list[float]] = {k: [] for k in names + BASELINES}
    inter_union: dict[str, list[tuple[int, int]]] = {k: [] for k in ious}
    t0 = time.time()
    for i in tqdm(range(start, start + n), disable=not progress, desc=f"evaluate {split}"):
        s = W.shapes_sample(split, i, world or W.WorldConfig())
        t = s.targets[0]
        scene = s.scene
        gt = scene.masks[t]
        hw = gt.shape
        rng = np.random.default_rng([seed, 7, i])
        wide, cm = object_prompts(scene, t, rng, prompts, exact=0.0, mask=1.0, wide=1.0)
        rng = np.random.default_rng([seed, 7, i])  # the same draws again, without widening
        jitter, _ = object_prompts(scene, t, rng, prompts, exact=0.0, mask=1.0, wide=0.0)
        boxes = {"gt": scene.box(t), "jitter": jitter, "wide": wide}
        image = Image.fromarray(scene.image)
        preds = {
            "gt_box_as_mask": _box_mask(boxes["gt"], hw),
            "jitter_box_as_mask": _box_mask(boxes["jitter"], hw),
            "wide_box_as_mask": _box_mask(boxes["wide"], hw),
            "coarse_prompt_as_mask": np.asarray(cm) > 0.5,
            "pooled24_gt_mask": pooled_mask(gt, prompts.coarse_grid),
        }
        for name in names:
            box, use_mask, multi = SETTINGS[name]
            r = refiner.refine(image, boxes[box], mask_prompt=cm if use_mask else None,
                               multimask=multi)
            preds[name] = r.mask
        for k, p in preds.items():
            inter_union[k].append(metrics.mask_inter_union(p, gt))
            ious[k].append(metrics.mask_iou(p, gt))
    secs = (time.time() - t0) / max(n, 1)
    return {
        "split": split, "n": n, "start": start, "seed": seed,
        "miou": {k: round(metrics.miou(v), 4) for k, v in ious.items()},
        "ciou": {k: round(sum(a for a, _ in v) / max(1, sum(b for _, b in v)), 4)
                 for k, v in inter_union.items()},
        "seconds_per_item": round(secs, 4),
    }


def format_table(figures: dict) -> str:
    """The held-out figures of :func:`evaluate` as a Markdown table.

    Book: ``book/05_grounding.ipynb``.
    """
    lines = [f"held-out: {figures['split']} items {figures['start']}..{figures['start'] + figures['n'] - 1}",
             "| setting | mIoU | cIoU |", "|---|---|---|"]
    for k, v in figures["miou"].items():
        lines.append(f"| {k} | {100 * v:.1f} | {100 * figures['ciou'][k]:.1f} |")
    return "\n".join(lines)


def timing(refiner, n: int = 20) -> dict:
    """Median milliseconds per image to encode and per box to decode (held-out images).

    Book: ``book/05_grounding.ipynb``.
    """
    enc, dec = [], []
    for i in range(n):
        it = W.shapes_item("heldout", i)
        image = it.image
        t = time.perf_counter()
        refiner.set_image(image)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        refiner.refine(image, it.box)
        dec.append(time.perf_counter() - t)
    return {"encode_ms": round(1000 * float(np.median(enc)), 2),
            "decode_ms": round(1000 * float(np.median(dec)), 2), "images": n,
            "threads": torch.get_num_threads()}


# =============================================================================== CLI
def _parse(argv: list[str] | None) -> tuple[TrainConfig, str | None, int]:
    cfg = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m minilocal.toy.train_sam",
                                 description="Train the shapes SAM from scratch (CPU).")
    ap.add_argument("--out", default=None, help="output folder (weights, config, report)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="steps between checkpoints in OUT (an interrupted run resumes when "
                         "the same command is run again; 0: none; default: %(default)s)")
    ints = ("steps", "batch", "warmup", "seed", "threads", "val_every", "val_items",
            "eval_items", "start_index")
    floats = ("lr", "final_lr", "weight_decay", "clip")
    for f in ints:
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(cfg, f))
    for f in floats:
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(cfg, f))
    ap.add_argument("--storage-dtype", choices=("float16", "float32"), default=cfg.storage_dtype)
    spec_fields = [f for f in fields(S.SamSpec) if f.name != "global_attn_indexes"]
    for f in spec_fields:
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(cfg.spec, f.name)),
                        default=getattr(cfg.spec, f.name))
    ap.add_argument("--global-attn-indexes", type=int, nargs="+",
                    default=list(cfg.spec.global_attn_indexes))
    for f in fields(PromptConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(cfg.prompts, f.name)),
                        default=getattr(cfg.prompts, f.name))
    a = ap.parse_args(argv)
    spec = S.SamSpec(**{f.name: getattr(a, f.name) for f in spec_fields},
                     global_attn_indexes=tuple(a.global_attn_indexes)).check()
    prompts = PromptConfig(**{f.name: getattr(a, f.name) for f in fields(PromptConfig)})
    cfg = replace(cfg, spec=spec, prompts=prompts, storage_dtype=a.storage_dtype,
                  **{f: getattr(a, f) for f in ints + floats})
    return cfg, a.out, a.checkpoint_every


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see ``--help``).

    Book: ``book/05_grounding.ipynb``.
    """
    cfg, out, checkpoint_every = _parse(argv)
    report = train(cfg, out, checkpoint_every=checkpoint_every)
    print(json.dumps({"train_seconds": report["train_seconds"],
                      "validation": report["validation"][-1] if report["validation"] else None},
                     indent=1))
    if "heldout" in report:
        print(format_table(report["heldout"]))


if __name__ == "__main__":
    main()
