"""Heads that park on a spot vs heads on the referent (experiments/LOG.md section 11).

Usage: python experiments/park_heads.py MODEL_DIR L0H4,L0H0,L2H5 [N]

For each head, on the first N (default 60) selection items of the model's world: how often
its spatial entropy (paper definition) is exactly 0, how often its argmax cell is the same
cell, and the share of its image attention on its 4 strongest cells.
"""

import sys

import numpy as np
import torch

from minilocal import load_model
from minilocal.criteria import spatial_entropy
from minilocal.selection import parse_head
from minilocal.toy import lvlm
from minilocal.toy import world as W

if len(sys.argv) < 3:
    raise SystemExit(__doc__)
torch.set_num_threads(1)
model, processor, adapter = load_model(sys.argv[1])
world = lvlm.world_of(model)
heads = [parse_head(h) for h in sys.argv[2].split(",")]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 60
zero = {hd: 0 for hd in heads}
peaks = {hd: [] for hd in heads}
top4 = {hd: [] for hd in heads}
for i in range(n):
    it = W.shapes_item("selection", i, world)
    attn, _ = adapter.attention(it.image, it.expr)  # [L, H, h, w]
    entropy = spatial_entropy(attn)  # [L, H]
    for layer, head in heads:
        a = attn[layer, head]
        zero[(layer, head)] += float(entropy[layer, head]) == 0.0
        peaks[(layer, head)].append(int(a.argmax()))
        top4[(layer, head)].append(float(np.sort(a.ravel())[::-1][:4].sum() / a.sum()))
for layer, head in heads:
    cells, counts = np.unique(peaks[(layer, head)], return_counts=True)
    print(f"L{layer}H{head}: entropy 0 on {zero[(layer, head)] / n:.2f} of items; argmax on "
          f"cell {cells[counts.argmax()]} on {counts.max() / n:.2f} of items ({len(cells)} "
          f"distinct cells); its 4 strongest cells hold {np.mean(top4[(layer, head)]):.2f} "
          "of its image attention")
