"""Where do the last token's heads look: the referent, the other objects, or background?

Usage: python experiments/object_share.py MODEL_DIR [easy] [N]

For N selection items (the world the model config names, or the easy world), the share of
each head's image attention on the referent's cells, on the other objects' cells and on
the background (cells whose centre lies in an object's mask). A lookup head puts most on
the referent; a "bag of objects" head spreads over all objects (referent ~ 1/objects).
"""

import sys
from dataclasses import replace

import numpy as np
import torch

from minilocal.adapters import get_adapter
from minilocal.toy import lvlm
from minilocal.toy import world as W

torch.set_num_threads(1)
model_dir = sys.argv[1]
n = int(next((a for a in sys.argv[2:] if a.isdigit()), 48))
model, processor = lvlm.load_toy(model_dir)
cfg = lvlm.world_of(model)
if "easy" in sys.argv[2:]:
    cfg = replace(cfg, relational=0.0, distractor=0.0, twin=0.0)
adapter = get_adapter(model, processor)


def share(attn, cells):
    """[L, H, h, w] maps, [h, w] bool cells -> [L, H] share of each map's mass on them."""
    return (attn * cells).sum((-1, -2)) / np.maximum(attn.sum((-1, -2)), 1e-12)


ref, oth, bg, nobj = [], [], [], []
for i in range(n):
    s = W.shapes_sample("selection", i, cfg)
    t = s.targets[0]
    attn, prep = adapter.attention(s.scene.image, s.exprs[0])  # [L, H, h, w]
    L, H, h, w = attn.shape
    S = s.scene.image.shape[0]
    cy = ((np.arange(h) + 0.5) * S / h).astype(int)
    cx = ((np.arange(w) + 0.5) * S / w).astype(int)
    cells = s.scene.masks[:, cy][:, :, cx]  # [n_obj, h, w]
    ref.append(share(attn, cells[t]))
    oth.append(share(attn, cells[np.arange(len(cells)) != t].any(0)))
    bg.append(share(attn, ~cells.any(0)))
    nobj.append(len(cells))
ref, oth, bg = np.mean(ref, 0), np.mean(oth, 0), np.mean(bg, 0)
print(f"{n} items, mean objects {np.mean(nobj):.2f}; heads by share on the referent:")
order = np.argsort(-ref.ravel())[:8]
for k in order:
    layer, head = divmod(int(k), ref.shape[1])
    print(f"  L{layer}H{head}: referent {ref.ravel()[k]:.3f}  other objects "
          f"{oth.ravel()[k]:.3f}  background {bg.ravel()[k]:.3f}")
