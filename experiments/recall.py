"""Localization heads inherited from text retrieval heads (experiments/LOG.md section 15).

Usage: python experiments/recall.py OUT [--world shapes|easy] [--recall-steps N]
           [--align-steps N] [--steps N] [--probe-every N] [--threads N]

The paper's heads come from an LLM that already had RETRIEVAL heads (attend to the earlier
token that matches what is asked, copy what it holds) before it saw an image; LLaVA's
stage 1 then trains only the projector, through the frozen LLM, so that image tokens are
read like words. None of this session's earlier stage 0s taught retrieval: they taught the
"." to gather the expression (train.text_stage). Three stages, every loss a next-token loss
on answer words (no loss on any attention):

A. recall (text only, decoder): each sequence describes one train scene's objects in
   words, in a random order, then asks about them::

       <s> SYSTEM big red circle r5 c7 ; small blue square r2 c3 ; where is the red shape . r5 c7 ...

   (a multi-query associative recall: the answer is copied from the matching description).
   Every sequence is a fresh train scene (drawn without its pixels), so the answers cannot
   be memorised: a first version drew from a pool of 3000 scenes and memorised them (train
   token accuracy 0.998, rows right on 0.59 of new scenes; LOG 15).
B. align (decoder and lm_head FROZEN; vision tower and projector trained): the usual image
   sequences of train.make_batch (``<s> SYSTEM <image> where is E . r c ...``). The frozen
   decoder's retrieval circuit answers only if an image cell is read like a description,
   so the projector is pulled towards that.
C. joint: the same sequences, everything trained (train's schedule and optimiser).
D. (``--then-steps``) C continued on another world (``--then-world``, default crowded: 5-8
   objects, where a mixture of all objects' features says less about the referent).

The probe (train.probe, 24 selection items) runs in B and C: the best heads' in-box share at
the last position. The model (4 layers x 8 heads, grid 12, patch-init std 0.2, as LOG 14)
is saved to OUT after each stage (OUT/A.pt ... OUT/D.pt; a finished stage is skipped);
the last as a model folder, OUT/model (OUT/model-D with stage D).
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from minilocal.toy import lvlm, train
from minilocal.toy import world as W

SEP = ";"


def parse(argv):
    ap = argparse.ArgumentParser(prog="python experiments/recall.py")
    ap.add_argument("out")
    ap.add_argument("--world", default="shapes", choices=list(W.WORLDS))
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--recall-steps", type=int, default=3000)
    ap.add_argument("--recall-batch", type=int, default=64)
    ap.add_argument("--align-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--then-world", default="crowded", choices=list(W.WORLDS),
                    help="world of stage D (default: %(default)s)")
    ap.add_argument("--then-steps", type=int, default=0,
                    help="steps of stage D: stage C's training continued on --then-world")
    ap.add_argument("--probe-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def description(obj, box, size, grid) -> str:
    return f"{obj.size} {obj.color} {obj.shape} {lvlm.answer(box, size, grid)}"


#: First train-split index of stage A's scenes (far from the image stages' items).
RECALL_START = 2 * 10**8


def _no_render(objects, cfg, S):
    """Stand-in for world._render in stage A: the scene's objects and boxes without its
    pixels (text needs none), so that every step draws fresh scenes at text speed."""
    masks = []
    for o in objects:
        m = np.zeros((S, S), bool)
        x0, y0, x1, y1 = o.box
        m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True  # Scene.box reads it
        masks.append(m)
    return np.zeros((S, S, 3), np.uint8), masks


def recall_batch(step, cfg, tok, batch):
    """Text-only recall sequences of fresh train scenes (never repeated, so that the
    answers cannot be memorised), their objects described in a random order."""
    rng = np.random.default_rng([cfg.seed, 1, step])
    seqs, labs = [], []
    render, W._render = W._render, _no_render
    try:
        for b in range(batch):
            s = W.shapes_sample("train", RECALL_START + step * batch + b, cfg.world,
                                questions=cfg.questions)
            size = (s.scene.image.shape[1], s.scene.image.shape[0])
            order = rng.permutation(len(s.scene.objects))
            desc = f" {SEP} ".join(description(s.scene.objects[o], s.scene.box(o), size,
                                               cfg.spec.grid) for o in order) + f" {SEP}"
            ids = tok(f"{lvlm.SYSTEM} {desc}")["input_ids"]
            lab = [-100] * len(ids)
            for t, expr in zip(s.targets, s.exprs):
                q = tok(f"{lvlm.QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
                a = tok(lvlm.answer(s.scene.box(t), size, cfg.spec.grid),
                        add_special_tokens=False)["input_ids"]
                ids += q + a
                lab += [-100] * len(q) + a
            seqs.append(ids)
            labs.append(lab)
    finally:
        W._render = render
    return lvlm.pad_sequences(seqs, labs, tok.pad_token_id)


def token_acc(out, batch) -> float:
    lab = batch["labels"][:, 1:]
    pred = out.logits[:, :-1].argmax(-1)
    sup = lab != -100
    return float((pred[sup] == lab[sup]).float().mean())


def probe_line(tag, step, model, processor, items, log):
    p = train._probe_summary(train.probe(model, processor, items))
    top = p["in_box_top"][:3]
    line = {"stage": tag, "step": step, "answer": p["answer"], "uniform": p["box_share"],
            "top": [(t["head"], t["in_box"], t["pointing"], t["s_img"]) for t in top]}
    print(json.dumps(line), flush=True)
    log.append({**line, "in_box": p["in_box"], "s_img": p["s_img"]})


def run_stage(tag, model, processor, cfg, steps, params, make, items, log, probe_every):
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    stage_cfg = replace(cfg, steps=steps)
    t0, run_loss, run_acc = time.time(), None, None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = train.lr_at(step, stage_cfg)
        batch = make(step)
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        v, a = float(out.loss.detach()), token_acc(out, batch)
        run_loss = v if run_loss is None else 0.95 * run_loss + 0.05 * v
        run_acc = a if run_acc is None else 0.95 * run_acc + 0.05 * a
        if step % 50 == 0 or step == steps - 1:
            print(f"{tag} {step}: loss {run_loss:.3f} token acc {run_acc:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
            log.append({"stage": tag, "step": step, "loss": round(run_loss, 4),
                        "token_acc": round(run_acc, 4), "elapsed_s": round(time.time() - t0, 1)})
        if items is not None and probe_every and (step + 1) % probe_every == 0:
            probe_line(tag, step + 1, model, processor, items, log)


def main(argv=None):
    a = parse(argv)
    torch.set_num_threads(a.threads)
    if SEP not in W.VOCABULARY:
        W.VOCABULARY = W.VOCABULARY + (SEP,)  # read by lvlm.build_tokenizer
    spec = replace(lvlm.ModelSpec(), layers=4, patch_init_std=0.2, image_size=a.image_size)
    cfg = train.TrainConfig(spec=spec, world=W.WORLDS[a.world], threads=a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    processor = lvlm.build_processor(spec)
    tok = processor.tokenizer
    model = lvlm.build_model(spec, processor, seed=cfg.seed)
    model.train()
    items = [W.shapes_item("selection", i, cfg.world) for i in range(24)]
    then = replace(cfg, world=W.WORLDS[a.then_world], start_index=10**6)
    log_path = out / "log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    lang = [p for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n]
    vision = [p for n, p in model.named_parameters()
              if not ("language_model" in n or "lm_head" in n)]
    stages = [
        ("A", a.recall_steps, lang, lambda s: recall_batch(s, cfg, tok, a.recall_batch), None),
        ("B", a.align_steps, vision, lambda s: train.make_batch(s, cfg, processor)[0], items),
        ("C", a.steps, list(model.parameters()),
         lambda s: train.make_batch(a.align_steps + s, cfg, processor)[0], items),
        ("D", a.then_steps, list(model.parameters()),
         lambda s: train.make_batch(s, then, processor)[0],
         [W.shapes_item("selection", i, then.world) for i in range(24)]),
    ]
    for tag, steps, params, make, probe_items in stages:
        path = out / f"{tag}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
            print(f"stage {tag}: loaded {path}", flush=True)
            continue
        if not steps:
            continue
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        if probe_items is not None:
            probe_line(tag, 0, model, processor, probe_items, log)
        run_stage(tag, model, processor, cfg, steps, params, make, probe_items, log,
                  a.probe_every)
        torch.save(model.state_dict(), path)
        log_path.write_text(json.dumps(log))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    final = out / ("model-D" if a.then_steps else "model")
    model.config.minilocal_world = asdict(then.world if a.then_steps else cfg.world)
    model.save_pretrained(final)
    processor.save_pretrained(final)
    (final / "training_report.json").write_text(json.dumps(
        {"command": " ".join(["python", "experiments/recall.py", *sys.argv[1:]]),
         "log": log}, default=float))


if __name__ == "__main__":
    main()
