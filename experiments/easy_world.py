"""Diagnostic: train on an EASY shapes world (no relations, no distractors, no twins).

Usage: python experiments/easy_world.py OUT IMAGE_SIZE STEPS [mimetic]
Expressions are then mostly one attribute ("the red shape", "the circle"): selecting the
referent needs a single-feature match. Probe items come from the same easy world.
See experiments/LOG.md section 8.
"""

import sys
from dataclasses import replace

from minilocal.toy import lvlm, train
from minilocal.toy import world as W

out, image_size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
easy = replace(W.WorldConfig(), relational=0.0, distractor=0.0, twin=0.0)
spec = replace(lvlm.ModelSpec(), layers=4, patch_init_std=0.2, image_size=image_size)
cfg = train.TrainConfig(spec=spec, world=easy, steps=steps, threads=1, probe_items=24)
if len(sys.argv) > 4 and sys.argv[4] == "mimetic":
    # mimetic attention init (Trockman & Kolter 2023): W_k = W_q in every decoder layer, so
    # that W_q^T W_k is positive semi-definite and a token attends to similar tokens from
    # the start; patched into the builder that train.train calls
    build = lvlm.build_model

    def build_mimetic(spec, processor, seed=0):
        import torch

        model = build(spec, processor, seed=seed)
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.self_attn.k_proj.weight.copy_(layer.self_attn.q_proj.weight)
        return model

    lvlm.build_model = build_mimetic
report = train.train(cfg, out)
print({k: v for k, v in report["probes"][-1].items() if k not in ("in_box", "pointing", "s_img")})
