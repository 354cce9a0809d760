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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import lvlm
from . import world as W


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


def make_batch(step: int, cfg: TrainConfig, processor) -> tuple[dict, int]:
    """The batch of step ``step``: train items ``start + step * batch ...`` of the world.

    Returns:
        (model inputs with labels, number of answers in the batch).
    """
    images, questions = [], []
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
    batch = lvlm.encode_questions(processor, images, questions, layout=cfg.spec.layout)
    return {k: v.to(cfg.device) for k, v in batch.items()}, sum(len(q) for q in questions)


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
        x0, y0, x1, y1 = prep.geometry.image_box_to_grid(it.box)
        ys, xs = (np.arange(h) + 0.5)[:, None], (np.arange(w) + 0.5)[None, :]
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)  # [h, w] cell centres
        mass = attn.sum((-1, -2))  # [L, H]
        in_box.append((attn * inside).sum((-1, -2)) / np.maximum(mass, 1e-12))
        flat = attn.reshape(L, H, -1).argmax(-1)  # [L, H]
        pointing.append(inside.reshape(-1)[flat])
        s_img.append(mass)
        share.append(inside.mean())
        # greedy answer: row token at ".", then column token after the true row
        truth = lvlm.answer(it.box, it.image.size, (h, w)).split()
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in prep.inputs.items()}
        ids = inputs["input_ids"]
        logits = model(**inputs).logits[0, -1]
        row = processor.tokenizer.convert_ids_to_tokens(int(logits.argmax()))
        row_id = torch.tensor([[processor.tokenizer.convert_tokens_to_ids(row)]], device=device)
        ids2 = torch.cat([ids, row_id], 1)
        inputs2 = {**inputs, "input_ids": ids2,
                   "attention_mask": torch.ones_like(ids2)}
        col = processor.tokenizer.convert_ids_to_tokens(int(model(**inputs2).logits[0, -1].argmax()))
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


def train(cfg: TrainConfig, out: str | Path | None = None, progress: bool = True) -> dict:
    """Train a shapes LVLM from scratch; save it (and its report) to ``out``.

    Args:
        cfg: The run's configuration.
        out: Folder for ``save_pretrained`` (model, tokenizer, processor) and
            ``training_report.json``; None keeps nothing on disk.
        progress: Show a tqdm progress bar.

    Returns:
        The training report (config, loss curve, probes, time, threads, versions).

    Book: ``book/06_your_model.ipynb``.
    """
    torch.set_num_threads(cfg.threads)
    processor = lvlm.build_processor(cfg.spec)
    model = lvlm.build_model(cfg.spec, processor, seed=cfg.seed)
    if cfg.init is not None:
        start, _ = lvlm.load_toy(cfg.init)
        if lvlm.spec_of(start) != cfg.spec:
            raise ValueError(
                f"--init {cfg.init}: its sizes {lvlm.spec_of(start)} differ from {cfg.spec}; "
                "pass the same sizes (or none: the defaults)")
        model.load_state_dict(start.state_dict())
    model = model.to(cfg.device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    probe_items = [W.shapes_item("selection", i, cfg.world) for i in range(cfg.probe_items)]
    report: dict = {
        "config": asdict(cfg),
        "command": " ".join([Path(sys.executable).name, "-m", "minilocal.toy.train"] + sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "log": [],
        "probes": [],
    }
    t0 = time.time()
    bar = tqdm(range(cfg.steps), disable=not progress, desc="train", dynamic_ncols=True)
    run_loss = run_acc = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch, _ = make_batch(step, cfg, processor)
        out_ = model(**batch)
        loss = out_.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        with torch.no_grad():
            lab = batch["labels"][:, 1:]
            pred = out_.logits[:, :-1].argmax(-1)
            sup = lab != -100
            acc = float((pred[sup] == lab[sup]).float().mean())
        loss_value = float(loss.detach())
        run_loss = loss_value if run_loss is None else 0.95 * run_loss + 0.05 * loss_value
        run_acc = acc if run_acc is None else 0.95 * run_acc + 0.05 * acc
        bar.set_postfix(loss=f"{run_loss:.3f}", tok_acc=f"{run_acc:.3f}")
        if step % 10 == 0 or step == cfg.steps - 1:
            report["log"].append(
                {"step": step, "loss": round(loss_value, 5), "token_acc": round(acc, 4),
                 "lr": lr_at(step, cfg), "elapsed_s": round(time.time() - t0, 1)}
            )
        last = step == cfg.steps - 1
        if last or (cfg.probe_every and step > 0 and step % cfg.probe_every == 0):
            p = probe(model, processor, probe_items)
            summary = {"step": step + 1, "elapsed_s": round(time.time() - t0, 1),
                       **_probe_summary(p)}
            report["probes"].append(summary)
            top = summary["in_box_top"][0]
            tqdm.write(
                f"step {step + 1}: answer {summary['answer']:.3f}  in-box mean "
                f"{summary['in_box_mean']:.3f} (uniform {summary['box_share']:.3f})  best "
                f"{top['head']} {top['in_box']:.3f} pointing {top['pointing']:.3f}"
            )
    report["train_seconds"] = round(time.time() - t0, 1)
    model.eval()
    model.to("cpu")
    model.config.minilocal_world = asdict(cfg.world)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "training_report.json").write_text(json.dumps(report, indent=1))
    report["model"] = model
    report["processor"] = processor
    return report


def _parse(argv: list[str] | None) -> tuple[TrainConfig, str | None]:
    cfg = TrainConfig()
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.toy.train",
        description="Train the shapes LVLM from scratch (CPU).",
    )
    ap.add_argument("--out", default=None, help="output folder (save_pretrained)")
    ap.add_argument("--init", default=None, help="start from this saved model (second stage)")
    for f in ("steps", "batch", "questions", "warmup", "seed", "threads", "probe_every",
              "probe_items", "start_index", "curriculum"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(cfg, f))
    for f in ("lr", "final_lr", "weight_decay", "clip"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(cfg, f))
    for f in ("layers", "heads", "kv_heads", "hidden", "intermediate", "vision_hidden",
              "image_size", "patch_size"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(cfg.spec, f))
    ap.add_argument("--patch-init-std", type=float, default=cfg.spec.patch_init_std)
    ap.add_argument("--rope-theta", type=float, default=cfg.spec.rope_theta)
    ap.add_argument("--positions", default=cfg.spec.positions, choices=list(lvlm.POSITION_CODES))
    ap.add_argument("--layout", default=cfg.spec.layout, choices=list(lvlm.PROMPT_TEMPLATES))
    ap.add_argument("--device", default=cfg.device, help="cpu (default) or cuda")
    ap.add_argument("--texture", action=argparse.BooleanOptionalAction, default=cfg.world.texture,
                    help="draw each shape kind with its own texture (world.TEXTURES)")
    a = ap.parse_args(argv)
    spec = replace(
        cfg.spec, layout=a.layout, patch_init_std=a.patch_init_std,
        positions=a.positions, rope_theta=a.rope_theta, **{f: getattr(a, f) for f in ("layers", "heads", "kv_heads", "hidden",
                                                "intermediate", "vision_hidden", "image_size",
                                                "patch_size")}
    )
    cfg = replace(
        cfg, spec=spec, device=a.device, world=replace(cfg.world, texture=a.texture), init=a.init,
        **{f: getattr(a, f) for f in ("steps", "batch", "questions", "warmup", "seed", "threads",
                                      "probe_every", "probe_items", "start_index", "curriculum", "lr",
                                      "final_lr", "weight_decay", "clip")},
    )
    return cfg, a.out


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see ``--help``)."""
    cfg, out = _parse(argv)
    report = train(cfg, out)
    last = {k: v for k, v in (report["probes"][-1] if report["probes"] else {}).items()
            if k not in ("in_box", "pointing", "s_img")}
    print(json.dumps({"train_seconds": report["train_seconds"], "final_probe": last}, indent=1))


if __name__ == "__main__":
    main()
