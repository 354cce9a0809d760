"""Why a head's box misses (experiments/LOG.md sections 12 and 13).

Usage: python experiments/box_failures.py MODEL HEADS [N]
  HEADS: e.g. L2H5 or L1H3,L2H5 (their maps are summed, as the pipeline does).

On selection items 300 .. 300+N-1 (default 100; past the items the head search uses),
with the paper's box step (sigma 1, > mean, all foreground cells), prints Acc@0.5, the
median ratio of box area to GT box area, and how the failures split: box too big (> 2x),
too small (< 0.5x), and failures with foreground cells more than 1.5 cells away from the
GT box (attention on another object), plus the mean share of the first head's attention
that lies that far away.
"""

import sys

import numpy as np
import torch

from minilocal.adapters import get_adapter
from minilocal.grounding import ground
from minilocal.metrics import box_iou
from minilocal.selection import parse_head
from minilocal.toy import evaluate, lvlm, train
from minilocal.toy import world as W

if len(sys.argv) < 3:
    raise SystemExit(__doc__)
torch.set_num_threads(1)
folder, heads = sys.argv[1], [parse_head(h) for h in sys.argv[2].split(",")]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
model, processor = lvlm.load_toy(folder)
adapter = get_adapter(model, processor)
items = list(W.shapes_dataset("selection", n, 300, cfg=lvlm.world_of(model)))
attn, preps = evaluate.collect_attention(adapter, items, progress=False)


def area(b):
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


ious, ratio, far, far_mass = [], [], [], []
for i, it in enumerate(items):
    geometry = preps[i].geometry
    g = ground(attn[i], heads, geometry)
    ious.append(float(box_iou(g.box, it.box)))
    ratio.append(area(g.box) / area(it.box) if g.box is not None else 0.0)
    near = train.cells_in_box(it.box, geometry, margin=1.5)
    far.append(bool((g.pseudo_mask & ~near).any()))
    first = attn[i][heads[0][0], heads[0][1]]
    far_mass.append(float(first[~near].sum() / max(first.sum(), 1e-12)))
ious, ratio, far = np.array(ious), np.array(ratio), np.array(far)
bad = ious < 0.5
print(f"{folder} {sys.argv[2]}: Acc@0.5 {1 - bad.mean():.3f} on {n} items; "
      f"median box / GT area {np.median(ratio):.2f}")
print(f"failures: {bad.sum()}; too big (> 2x) {(bad & (ratio > 2)).sum()}, too small "
      f"(< 0.5x) {(bad & (ratio < 0.5)).sum()}; with foreground > 1.5 cells from the box "
      f"{(bad & far).sum()}")
print(f"mean share of {sys.argv[2].split(',')[0]}'s attention > 1.5 cells from the box: "
      f"{np.mean(far_mass):.3f}")
