"""Acc@0.5 of combinations of a model's heads on SELECTION items (experiments/LOG.md section 13).

    python experiments/head_combos.py MODEL HEADS [START N]

HEADS: comma-separated heads (e.g. L3H0,L2H5,L1H3,L3H2). Prints every single head, pair and
triple of them with the paper's box step (sigma 1, mean threshold, all components), and the
triple with the "largest component" variant, on selection items START..START+N-1 (default
300..499, past the items the head search uses). For choosing training recipes only: it never
reads the held-out split.
"""

import itertools
import sys

import numpy as np
import torch

from minilocal.adapters import get_adapter
from minilocal.grounding import ground
from minilocal.metrics import box_iou
from minilocal.selection import format_head, parse_head
from minilocal.toy import lvlm
from minilocal.toy import world as W
from minilocal.toy.evaluate import collect_attention


def acc(attn, preps, items, heads, **kw):
    hits = []
    for i, it in enumerate(items):
        g = ground(attn[i], heads, preps[i].geometry, **kw)
        hits.append(g.box is not None and box_iou(g.box, it.box) >= 0.5)
    return float(np.mean(hits))


def main():
    torch.set_num_threads(1)
    model_dir, heads = sys.argv[1], [parse_head(h) for h in sys.argv[2].split(",")]
    start, n = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (300, 200)
    model, processor = lvlm.load_toy(model_dir)
    items = list(W.shapes_dataset("selection", n, start, cfg=lvlm.world_of(model)))
    attn, preps = collect_attention(get_adapter(model, processor), items, progress=False)
    for r in (1, 2, 3):
        for combo in itertools.combinations(heads, r):
            name = ",".join(format_head(h) for h in combo)
            print(f"{name:24s} {acc(attn, preps, items, list(combo)):.3f}")
    if len(heads) >= 3:
        top = heads[:3]
        print(f"{'largest component':24s} {acc(attn, preps, items, top, component='largest'):.3f}"
              f"  ({','.join(format_head(h) for h in top)})")


if __name__ == "__main__":
    main()
