"""Which heads of recall.py's stage A retrieve (experiments/LOG.md section 15).

Usage: python experiments/recall_heads.py OUT [N]

Loads OUT/A.pt (the decoder after the text recall stage), builds N recall sequences from
train scenes that stage A never saw, and prints, per head, the share of the attention at
the first "." (the query of the first question) that falls on the referent's description
(its words, position words and ";"), against the share a uniform spread over all the
descriptions would give: a retrieval head puts most of it there.
"""

import sys
from dataclasses import replace

import numpy as np
import torch
from recall import RECALL_START, SEP, description  # experiments/recall.py

from minilocal.toy import lvlm, train
from minilocal.toy import world as W


def main(argv):
    out, n = argv[0], int(argv[1]) if len(argv) > 1 else 64
    if SEP not in W.VOCABULARY:
        W.VOCABULARY = W.VOCABULARY + (SEP,)
    spec = replace(lvlm.ModelSpec(), layers=4, patch_init_std=0.2, image_size=48)
    cfg = train.TrainConfig(spec=spec)
    processor = lvlm.build_processor(spec)
    tok = processor.tokenizer
    model = lvlm.build_model(spec, processor)
    model.load_state_dict(torch.load(f"{out}/A.pt", weights_only=True))
    model.set_attn_implementation("eager")
    model.eval()
    rng = np.random.default_rng(5)
    on_ref, uniform, correct, attribute = [], [], [], []
    for i in range(n):
        s = W.shapes_sample("train", RECALL_START - 1 - i, cfg.world, questions=1)
        size = (s.scene.image.shape[1], s.scene.image.shape[0])
        order = rng.permutation(len(s.scene.objects))
        ids = tok(lvlm.SYSTEM)["input_ids"]
        spans = {}
        for o in order:
            words = tok(description(s.scene.objects[o], s.scene.box(o), size, spec.grid)
                        + f" {SEP}", add_special_tokens=False)["input_ids"]
            spans[int(o)] = (len(ids), len(ids) + len(words))
            ids += words
        start = spans[int(order[0])][0]
        ids += tok(f"{lvlm.QUESTION} {s.exprs[0]} .", add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            o = model(input_ids=x, attention_mask=torch.ones_like(x), output_attentions=True)
        att = torch.stack([a[0, :, -1] for a in o.attentions]).numpy()  # [L, H, T]
        a, b = spans[int(s.targets[0])]
        desc_mass = att[..., start:spans[int(order[-1])][1]].sum(-1)
        on_ref.append(att[..., a:b].sum(-1) / np.maximum(desc_mass, 1e-12))
        uniform.append((b - a) / (spans[int(order[-1])][1] - start))
        truth = lvlm.answer(s.scene.box(s.targets[0]), size, spec.grid).split()[0]
        correct.append(tok.convert_ids_to_tokens(int(o.logits[0, -1].argmax())) == truth)
        attribute.append(s.kinds[0] == "attribute")
    on_ref, uniform, correct = np.array(on_ref), np.array(uniform), np.array(correct)
    L, H = on_ref.shape[1:]
    for kind, sel in (("all", np.ones(n, bool)), ("attribute", np.array(attribute)),
                      ("relational", ~np.array(attribute))):
        if not sel.any():
            continue
        share = on_ref[sel].mean(0)
        top = ", ".join(f"L{i // H}H{i % H} {share.ravel()[i]:.3f}"
                        for i in np.argsort(-share.ravel())[:4])
        print(f"{kind} ({sel.sum()}): row answer correct {correct[sel].mean():.3f}; uniform "
              f"share on the referent's description {uniform[sel].mean():.3f}; best heads {top}")


if __name__ == "__main__":
    main(sys.argv[1:])
