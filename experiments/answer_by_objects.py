"""Exact answers by the number of objects in the scene (experiments/LOG.md section 15).

Usage: python experiments/answer_by_objects.py MODEL_DIR [N]

A model that reads the referent's cell out of a MIXTURE of all objects' features (LOG
section 8: select after attention, not with it) should lose accuracy as scenes hold more
objects, since the mixture superposes more bound (content, position) features; a model
whose heads look the referent up should not. On the first N (default 240) selection items:
the share of exact row+column answers (greedy, as train.probe), by object count, and the
best head's in-box share at the last position for the same items.
"""

import sys
from collections import defaultdict

import numpy as np
import torch

from minilocal import load_model
from minilocal.toy import lvlm, train
from minilocal.toy import world as W


def main(argv):
    torch.set_num_threads(1)
    model, processor, adapter = load_model(argv[0])
    n = int(argv[1]) if len(argv) > 1 else 240
    world = lvlm.world_of(model)
    right, in_box = defaultdict(list), defaultdict(list)
    for i in range(n):
        s = W.shapes_sample("selection", i, world)
        it = W.shapes_item("selection", i, world)
        k = len(s.scene.objects)
        attn, prep = adapter.attention(it.image, it.expr)  # [L, H, h, w]
        inside = train.cells_in_box(it.box, prep.geometry)
        mass = attn.sum((-1, -2))
        in_box[k].append((attn * inside).sum((-1, -2)) / np.maximum(mass, 1e-12))
        truth = lvlm.answer(it.box, it.image.size, prep.grid).split()
        row, col = train.greedy_answer(model, processor, prep.inputs)
        right[k].append(row == truth[0] and col == truth[1])
    for k in sorted(right):
        ib = np.mean(in_box[k], 0)
        L, H = ib.shape
        j = int(ib.argmax())
        print(f"{k} objects ({len(right[k])} items): exact answers {np.mean(right[k]):.3f}; "
              f"best head at the last position L{j // H}H{j % H} in-box {ib.ravel()[j]:.3f}")
    everything = [r for v in right.values() for r in v]
    print(f"all ({len(everything)}): exact answers {np.mean(everything):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
