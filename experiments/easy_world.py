"""Train on an EASY shapes world: no relations, distractors or twins (experiments/LOG.md section 8).

Usage: python experiments/easy_world.py OUT IMAGE_SIZE STEPS [mimetic|aligned|plain] [hard] [2threads]

"aligned": mimetic init AND the word embeddings of the colour and shape words set to the
mean (centred) image feature of patches of that colour / shape, measured at init on 32
train scenes: a "red" token and a red patch then start out similar.
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
if "hard" in sys.argv[5:]:  # the default world instead (the shipped model's)
    easy = W.WorldConfig()
threads = 2 if "2threads" in sys.argv[5:] else 1
spec = replace(lvlm.ModelSpec(), layers=4, patch_init_std=0.2, image_size=image_size)
cfg = train.TrainConfig(spec=spec, world=easy, steps=steps, threads=threads, probe_items=24)
if len(sys.argv) > 4 and sys.argv[4] in ("mimetic", "aligned"):
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
            if sys.argv[4] == "aligned":
                align_words(model, processor, spec)
        return model

    def align_words(model, processor, spec):
        import numpy as np
        import torch

        h, w = spec.grid
        feats, colours, shapes = [], [], []
        for i in range(32):
            sc = W.shapes_sample("train", 10**7 + i, easy).scene
            pv = processor.image_processor(images=[sc.image], return_tensors="pt")["pixel_values"]
            hs = model.model.vision_tower(pv, output_hidden_states=True).hidden_states[-2][:, 1:]
            feats.append(model.model.multi_modal_projector(hs)[0])  # [h*w, D]
            S = sc.image.shape[0]
            centres = ((np.arange(h) + 0.5) * S / h).astype(int)
            col = np.full((h, w), "", dtype=object)
            shp = np.full((h, w), "", dtype=object)
            for obj, m in zip(sc.objects, sc.masks):
                inside = m[np.ix_(centres, centres)]
                col[inside], shp[inside] = obj.color, obj.shape
            colours.append(col.ravel())
            shapes.append(shp.ravel())
        feats = torch.cat(feats)
        colours, shapes = np.concatenate(colours), np.concatenate(shapes)
        on = torch.from_numpy(colours != "")
        centre = feats[on].mean(0)
        emb = model.get_input_embeddings().weight
        scale = emb.norm(dim=-1).mean()
        tok = processor.tokenizer
        for words, labels in ((W.COLORS, colours), (W.SHAPES, shapes)):
            for word in words:
                sel = torch.from_numpy(labels == word)
                if sel.any():
                    v = feats[sel].mean(0) - centre
                    emb[tok.convert_tokens_to_ids(word)] = v / v.norm() * scale

    lvlm.build_model = build_mimetic
report = train.train(cfg, out)
print({k: v for k, v in report["probes"][-1].items() if k not in ("in_box", "pointing", "s_img")})
