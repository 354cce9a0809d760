"""Oracle Acc@0.5 of the chosen world at grid 24 (experiments/LOG.md section 1, last row)."""
import sys, numpy as np, collections
from minilocal.toy import world as W
from minilocal.geometry import Geometry
from minilocal.grounding import ground
def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])); iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix*iy/((a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - ix*iy)
def run(cfg, grid, n=400):
    rows = []
    for i in range(n):
        it = W.shapes_item("heldout", i, cfg)
        g = Geometry.resize(it.image.size, (grid, grid))
        r = ground(g.image_mask_to_grid(it.mask)[None, None], [(0, 0)], g)
        rows.append((iou(r.box, it.box) >= 0.5, it.meta["size"], it.meta["kind"], it.meta["n_objects"], len(it.expr.split())))
    ok = np.array([r[0] for r in rows]); size = np.array([r[1] for r in rows])
    print(f"  grid {grid}: oracle {ok.mean():.3f} small {ok[size=='small'].mean():.3f} big {ok[size=='big'].mean():.3f}; "
          f"relational {np.mean([r[2]=='relational' for r in rows]):.2f}; objects {sorted(collections.Counter(r[3] for r in rows).items())}; "
          f"expr words {sorted(collections.Counter(r[4] for r in rows).items())}", flush=True)
for small, big, gap, margin, rel, dis in [((0.29,0.34),(0.40,0.46),0.015,0.0,0.5,0.6)]:
    cfg = W.WorldConfig(image_size=96, small=small, big=big, gap=gap, margin=margin, relational=rel, distractor=dis)
    print(cfg)
    for grid in (24,): run(cfg, grid)
