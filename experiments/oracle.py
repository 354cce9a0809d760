"""Oracle Acc@0.5 (GT mask pooled to the grid, default box step): experiments/LOG.md section 1."""
import sys, numpy as np, time
from dataclasses import replace
from minilocal.toy import world as W
from minilocal.geometry import Geometry
from minilocal.grounding import ground

def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])); iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - ix*iy
    return ix*iy/u

def run(cfg, grid, n=400):
    ious, kinds, sizes, nobj = [], [], [], []
    for i in range(n):
        it = W.shapes_item("heldout", i, cfg)
        g = Geometry.resize(it.image.size, (grid, grid))
        m = g.image_mask_to_grid(it.mask)
        r = ground(m[None, None], [(0, 0)], g)
        ious.append(iou(r.box, it.box)); kinds.append(it.meta["kind"]); sizes.append(it.meta["size"]); nobj.append(it.meta["n_objects"])
    ious = np.array(ious); sizes=np.array(sizes); kinds=np.array(kinds)
    return (ious >= 0.5).mean(), (ious[sizes=="small"]>=.5).mean(), (ious[sizes=="big"]>=.5).mean(), np.mean(nobj), (kinds=="relational").mean()

t=time.time()
for small, big in [((0.22,0.28),(0.34,0.42)), ((0.25,0.3),(0.36,0.44)), ((0.18,0.24),(0.3,0.38)), ((0.28,0.33),(0.38,0.45))]:
    cfg = W.WorldConfig(small=small, big=big)
    for grid in (16, 20, 24):
        acc, accs, accb, no, rel = run(cfg, grid)
        print(f"small={small} big={big} grid={grid}: oracle Acc@0.5={acc:.3f} (small {accs:.3f}, big {accb:.3f}); mean objects {no:.2f}; relational {rel:.2f}", flush=True)
print(time.time()-t)
