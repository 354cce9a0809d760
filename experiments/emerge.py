"""Does a sharper attention at initialisation let a referent lookup emerge? (LOG section 14)

Usage: python experiments/emerge.py OUT IMAGE_SIZE STEPS [FLAGS...]

The model is trained by ``minilocal.toy.train`` with the answer loss only (no planting).
At initialisation a head at "." spreads its attention over ~150-600 keys, so the gradient
that would teach it to prefer the referent's cells is ~1/n of what it is in a short text
sequence (LOG sections 4 and 9). ``qk=S`` multiplies the initial query projections of every
decoder layer by S, so that the initial attention logits are S times larger: each head
starts with a sharper, random preference among keys, and a small change of its query moves
its attention S times more. The weights are ordinary: the saved model needs nothing extra.

Flags:
  easy     the easy world (no relations, distractors or twins)
  text0    stage 0 first (1500 text-only steps: the gather, ``train.text_stage``)
  qk=S     initial query projections times S in every decoder layer (applied before stage 0)
  qfirst   question-first layout (one question per image, before the image)
  qboth    the question BEFORE and AFTER the image (one question per image):
           "SYSTEM where is EXPR . <image> where is EXPR . r c". The image tokens can read
           the expression and mark the referent's cells; the last "." can then reach them
           with a constant query, or look up the referent itself: either way its heads
           attend to the referent. The words after the image can also look up their own
           attribute, as in the image-first layout
  out      save the model to OUT
Model: 4 layers x 8 heads, patch-init std 0.2, batch 16, 4 questions per image, 1 thread.
The probe (24 selection items) prints the best heads' in-box share at every 100 steps.
"""

import sys
from dataclasses import replace

import torch
from diag_common import parse, print_report  # experiments/diag_common.py

from minilocal.toy import lvlm, train

out, image_size, steps, flags, world, spec = parse(sys.argv[1:])
if "qfirst" in flags or "qboth" in flags:
    spec = replace(spec, layout="question_first")
if "qboth" in flags:
    # the probe's prompt (the adapter reads the template stored in the config at build time)
    lvlm.PROMPT_TEMPLATES["question_first"] = (
        lvlm.SYSTEM + " " + lvlm.QUESTION + " {expr}\n{image}\n" + lvlm.QUESTION + " {expr}")
    _encode = lvlm.encode_questions

    def encode_both(processor, images, questions, layout="image_first"):
        """One question per image, before and after it; the answer after the second."""
        tok = processor.tokenizer
        pv = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        n = (pv.shape[-2] // processor.patch_size) * (pv.shape[-1] // processor.patch_size)
        image_ids = tok(" ".join([processor.image_token] * n), add_special_tokens=False)["input_ids"]
        seqs, labs = [], []
        for qa in questions:
            expr, ans = qa[0]
            q = tok(f"{lvlm.QUESTION} {expr} .", add_special_tokens=False)["input_ids"]
            a = tok(ans, add_special_tokens=False)["input_ids"]
            ids = tok(lvlm.SYSTEM)["input_ids"] + q + image_ids + q
            seqs.append(ids + a)
            labs.append([-100] * len(ids) + a)
        return {**lvlm.pad_sequences(seqs, labs, tok.pad_token_id), "pixel_values": pv}

    lvlm.encode_questions = encode_both
scales = [float(f.split("=")[1]) for f in flags if f.startswith("qk=")]
cfg = train.TrainConfig(spec=spec, world=world, steps=steps, threads=1, probe_items=24,
                        text_steps=1500 if "text0" in flags else 0)
build = lvlm.build_model


def build_scaled(spec, processor, seed=0):
    model = build(spec, processor, seed=seed)
    if scales:
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.self_attn.q_proj.weight.mul_(scales[0])
    return model


lvlm.build_model = build_scaled
report = train.train(cfg, out if "out" in flags else None, progress=False)
print_report(report, cfg.plant)
