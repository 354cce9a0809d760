"""Is the referent looked up at an EARLIER token than the last? (experiments/LOG.md section 11)

Usage: python experiments/query_positions.py MODEL_DIR [N]

The paper's query is the last prompt token (here "."). A model may instead look the
referent up at the expression's own words (the noun "circle" attending to circles) and
carry the result to ".". For the last 4 query positions of the prompt (".", and the three
tokens before it), on the first N (default 48) selection items: the best head's in-box
share (mean share of its image attention inside the GT box) and pointing (share of items
whose argmax cell is in the box). The attention row of a position does not depend on later
tokens (causal), so the prompt is cut after the query and the package's
``last_token_attention`` is used unchanged.
"""

import sys

import numpy as np
import torch

from minilocal import load_model
from minilocal.attention import last_token_attention
from minilocal.toy import lvlm, train
from minilocal.toy import world as W

if len(sys.argv) < 2:
    raise SystemExit(__doc__)
torch.set_num_threads(1)
model, processor, adapter = load_model(sys.argv[1])
world = lvlm.world_of(model)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 48
OFFSETS = (0, 1, 2, 3)  # 0: the last token
in_box = {o: [] for o in OFFSETS}
pointing = {o: [] for o in OFFSETS}
words = {o: [] for o in OFFSETS}
for i in range(n):
    it = W.shapes_item("selection", i, world)
    prep = adapter.prepare(it.image, it.expr)
    inside = train.cells_in_box(it.box, prep.geometry).reshape(-1)  # [h*w]
    ids = prep.inputs["input_ids"]
    for o in OFFSETS:
        end = ids.shape[1] - o
        inputs = {**prep.inputs, "input_ids": ids[:, :end],
                  "attention_mask": prep.inputs["attention_mask"][:, :end]}
        with torch.no_grad():
            a = last_token_attention(model, inputs, prep.positions, adapter.decoder(),
                                     forward_kwargs=adapter.forward_kwargs())[0]  # [L, H, n]
        a = a.numpy()
        in_box[o].append((a * inside).sum(-1) / np.maximum(a.sum(-1), 1e-12))
        pointing[o].append(inside[a.argmax(-1)])
        words[o].append(processor.tokenizer.convert_ids_to_tokens(int(ids[0, end - 1])))
for o in OFFSETS:
    ib, pt = np.mean(in_box[o], 0), np.mean(pointing[o], 0)  # [L, H]
    order = np.argsort(ib.ravel())[::-1][:3]
    best = ", ".join(f"L{k // ib.shape[1]}H{k % ib.shape[1]} {ib.ravel()[k]:.3f} "
                     f"({pt.ravel()[k]:.2f})" for k in order)
    common = max(set(words[o]), key=words[o].count)
    print(f"query = last token - {o} (e.g. {common!r}): best heads in-box (pointing): {best}")
