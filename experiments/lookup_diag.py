"""The referent lookup at the last position (experiments/LOG.md sections 9, 11 and 12).

Usage: python experiments/lookup_diag.py OUT IMAGE_SIZE STEPS [FLAGS...]

Flags (any order):
  easy     the easy world (no relations, distractors or twins)
  attr     questions ask for an attribute the expression does NOT name, answered by one
           word: "what colour is the circle ." -> red, "what shape is the red shape ." ->
           circle, "what size is the green circle ." -> big. Once the referent is found
           the answer is read from its own patches, unlike a centre cell (r7 c12), which
           must be decoded from an average of position codes. The probe then asks
           "what colour is EXPR .".
  mixed    with attr: one question in three is "what is EXPR ." -> r c (the where task).
  gather   ORACLE gather (not a design to ship): the mean input embedding of the
           expression words (between "is" and ".") is added to the embedding of every
           ".", so that a layer-0 head at "." can match expression against patches in
           one hop, instead of needing an earlier layer to move the expression into ".".
  mimetic  W_k = W_q in every decoder layer at init.
  heads4   4 heads of dimension 32 per layer (default 8 of 16).
  rope1e6  rope_theta 1e6.
  qfirst   question-first layout (one question per image, before the image; the query is
           a "." after the image).
  plant    PLANT heads L0H5 and L1H3 (train.TrainConfig.plant: an extra loss pulls their
           attention from each answer's query onto the referent's mask).
  text0    STAGE 0, language pre-training (as LLaVA starts from a pre-trained LM): 1500
           steps of text-only sequences "<s> SYSTEM where is E1 . w1 where is E2 . w2 ..."
           where each w is a word of its expression drawn at random (not "the"): the best
           prediction at "." is the expression's bag of words, so the decoder learns to
           GATHER the expression into the query position, without 576 image tokens diluting
           the gradient. Then the usual training from those weights.
  out      save the model to OUT (default: nothing saved).
Model: 4 layers, patch-init std 0.2, batch 16, 4 questions per image, 1 thread.
"""

import sys
from dataclasses import replace

import numpy as np
import torch
from diag_common import parse, print_report  # experiments/diag_common.py

from minilocal.toy import lvlm, train
from minilocal.toy import world as W

out, image_size, steps, flags, world, spec = parse(sys.argv[1:])
if "heads4" in flags:
    spec = replace(spec, heads=4, kv_heads=4)
if "rope1e6" in flags:
    spec = replace(spec, rope_theta=1e6)
if "qfirst" in flags:
    spec = replace(spec, layout="question_first")
cfg = train.TrainConfig(spec=spec, world=world, steps=steps, threads=1, probe_items=24,
                        plant=((0, 5), (1, 3)) if "plant" in flags else ())
ATTR_WORD = {"color": "colour", "shape": "shape", "size": "size"}

if "attr" in flags:
    W.VOCABULARY = W.VOCABULARY + ("what", "colour", "size")  # read by build_tokenizer
    lvlm.QUESTION = "what"  # encode_questions writes f"{QUESTION} {expr} ."

    def make_batch(step, cfg, processor, targets=False):
        if targets:
            raise SystemExit("attr does not combine with plant (no referent maps for planting)")
        rng = np.random.default_rng([7, step])
        images, questions = [], []
        w = train.world_at(step, cfg)
        for b in range(cfg.batch):
            s = W.shapes_sample("train", cfg.start_index + step * cfg.batch + b, w,
                                questions=cfg.questions)
            size = (s.scene.image.shape[1], s.scene.image.shape[0])
            qa = []
            for t, expr in zip(s.targets, s.exprs):
                obj = s.scene.objects[t]
                if "mixed" in flags and rng.random() < 1 / 3:
                    qa.append((f"is {expr}", lvlm.answer(s.scene.box(t), size, cfg.spec.grid)))
                    continue
                words = set(expr.split())
                absent = [a for a in ATTR_WORD if obj.attribute(a) not in words]
                a = absent[int(rng.integers(len(absent)))] if absent else "color"
                qa.append((f"{ATTR_WORD[a]} is {expr}", obj.attribute(a)))
            images.append(s.scene.image)
            questions.append(qa)
        batch = lvlm.encode_questions(processor, images, questions, layout=cfg.spec.layout)
        return batch, sum(len(q) for q in questions)

    train.make_batch = make_batch


class OracleGather(torch.nn.Module):
    """Input embedding that adds the mean expression embedding to every "."."""

    def __init__(self, base, dot_id, is_id):
        super().__init__()
        self.base, self.dot_id, self.is_id = base, dot_id, is_id

    @property
    def weight(self):
        return self.base.weight

    def forward(self, ids):
        e = self.base(ids)
        add = torch.zeros_like(e)
        for b in range(ids.shape[0]):
            start = None
            for t, tok in enumerate(ids[b].tolist()):
                if tok == self.is_id:
                    start = t + 1
                elif tok == self.dot_id and start is not None and t > start:
                    add[b, t] = e[b, start:t].mean(0)
                    start = None
        return e + add


build = lvlm.build_model


def text_stage(model, processor, steps=1500, batch=64):
    """Stage 0: text-only training; the loss is on the word after each "."."""
    tok = processor.tokenizer
    rng = np.random.default_rng(11)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.0)
    prefix = tok(lvlm.SYSTEM)["input_ids"]
    pool = [W.shapes_sample("train", 10**8 + i, world, questions=4).exprs for i in range(2000)]
    for step in range(steps):
        seqs, labs = [], []
        for _ in range(batch):
            ids, lab = list(prefix), [-100] * len(prefix)
            for expr in pool[int(rng.integers(len(pool)))]:
                q = tok(f"{lvlm.QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
                words = [w for w in expr.split() if w != "the"]
                a = tok(str(words[int(rng.integers(len(words)))]),
                        add_special_tokens=False)["input_ids"]
                ids += q + a
                lab += [-100] * len(q) + a
            seqs.append(ids)
            labs.append(lab)
        T = max(map(len, seqs))
        ids_t = torch.full((batch, T), tok.pad_token_id)
        lab_t = torch.full((batch, T), -100)
        mask = torch.zeros((batch, T), dtype=torch.long)
        for i, (a, b) in enumerate(zip(seqs, labs)):
            ids_t[i, : len(a)], lab_t[i, : len(b)], mask[i, : len(a)] = (
                torch.tensor(a), torch.tensor(b), 1)
        loss = model(input_ids=ids_t, attention_mask=mask, labels=lab_t).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"text stage {step}: loss {float(loss):.3f}", flush=True)


def build_diag(spec, processor, seed=0):
    model = build(spec, processor, seed=seed)
    if "text0" in flags:
        text_stage(model, processor)
    lm = model.model.language_model
    if "attr" in flags:
        model.config.minilocal_prompt_template = (
            lvlm.SYSTEM + " what colour is {expr}\n{image}\n." if "qfirst" in flags
            else lvlm.SYSTEM + "\n{image}\nwhat colour is {expr}")
    if "mimetic" in flags:
        with torch.no_grad():
            for layer in lm.layers:
                layer.self_attn.k_proj.weight.copy_(layer.self_attn.q_proj.weight)
    if "gather" in flags:
        tok = processor.tokenizer
        lm.embed_tokens = OracleGather(lm.embed_tokens, tok.convert_tokens_to_ids("."),
                                       tok.convert_tokens_to_ids("is"))
    return model


lvlm.build_model = build_diag
report = train.train(cfg, out if "out" in flags else None)
print_report(report, cfg.plant)
