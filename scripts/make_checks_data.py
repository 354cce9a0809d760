"""Compute the checkers' stored data: realistic inputs and every case's expected answer.

    python scripts/make_checks_data.py            # write minilocal/checks_data/
    python scripts/make_checks_data.py --check    # exit 1 if the stored data drifted

Run from the repository root. The expected answers come from the package's reference
implementation (:data:`REFERENCES`); ``tests/test_checks.py`` recomputes them and fails on
drift, so after a deliberate change to a reference function run this script and commit.

Realistic inputs (``realistic.npz``):

* ``last_token_attention`` and ``s_img``: a tiny RANDOM LLaVA built from a config in code
  (``tests/tiny_models.py``), its eager attention and last rows on one image and expression.
  Its expected ``attn`` is the package's capture path (``LlavaAdapter.attention``).
* ``grid_box_to_image``: the grid box (24 x 24, LLaVA-1.5's grid) that a perfect pseudo
  mask would give for a person standing on the right of a 640 x 427 COCO-sized photo
  (:func:`coco_person_grid_box`): the cells that cover its pixel box, through the padding.
* every other checker: SYNTHETIC attention-like maps made by :func:`synthetic_attention`
  (seeded): 20 samples x 6 layers x 8 heads on a 12 x 12 grid, with "sink" heads that look
  at text, diffuse and scattered heads, single-cell heads and three localizing heads.
  These should be replaced by maps of the embedded shapes model once it ships
  (``minilocal/assets/shapes-lvlm``): change :func:`realistic_inputs` and rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from minilocal import checks, criteria, grounding, metrics, selection  # noqa: E402
from minilocal.geometry import Geometry  # noqa: E402

DATA_DIR = ROOT / "minilocal" / "checks_data"
SEED = 2025
GRID = (12, 12)
LAYERS, HEADS, SAMPLES = 6, 8, 20
LOCALIZERS = [(3, 5), (4, 1), (3, 2), (5, 6)]
IMAGE_SIZE = (640, 427)  # (W, H) of the pretend photo the synthetic grid covers
LLAVA_GRID = (24, 24)  # LLaVA-1.5's grid of image tokens (336 px canvas, 14 px patches)
PERSON_BOX = (402.0, 61.0, 583.0, 427.0)  # xyxy pixels on IMAGE_SIZE: feet on the bottom edge
EXPR = "the small red circle left of the square"


def _eager_rows_to_grid(attentions, positions, grid):
    """Oracle for the hand-built slicing cases: last query row at the image positions."""
    rows = np.stack([np.asarray(a)[0, :, -1, :] for a in attentions])  # [L, H, T]
    pos = np.asarray(positions)
    return rows[:, :, pos].reshape(rows.shape[0], rows.shape[1], *grid)  # [L, H, h, w]


#: The reference answer of every checker, from the package (the slicing oracle aside).
REFERENCES = {
    "last_token_attention": _eager_rows_to_grid,
    "s_img": lambda row, positions: criteria.s_img(
        np.asarray(row)[..., np.asarray(positions)][..., None, :]  # [L, H, 1, n]
    ),
    "find_elbow": criteria.find_elbow,
    "spatial_entropy": lambda map2d: float(criteria.spatial_entropy(map2d)),
    "selection_frequency": selection.selection_frequency,
    "pseudo_mask": grounding.pseudo_mask,
    "convex_hull": grounding.convex_hull,
    "grid_box": lambda mask: grounding.hull_to_box(grounding.convex_hull(mask)),
    "grid_box_to_image": lambda box_grid, grid, image_size: Geometry.pad_to_square(
        image_size, grid).grid_box_to_image(box_grid),
    "box_iou": metrics.box_iou,
    "acc_at": metrics.acc_at,
}


# ----------------------------------------------------------------------------------------
# Realistic inputs
# ----------------------------------------------------------------------------------------


def _gauss(h: int, w: int, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))


def synthetic_attention(seed: int = SEED, n: int = SAMPLES, layers: int = LAYERS,
                        heads: int = HEADS, grid: tuple[int, int] = GRID):
    """Attention-like maps [n, L, H, h, w] and the referent's grid box of each sample.

    Each head has a role kept across samples: most are "sinks" (S_img 0.01-0.08: they look
    at text), some diffuse or scattered over the image, two put everything on one cell, and
    the heads in ``LOCALIZERS`` put a blob on the referent (missing it in 15% of samples).
    Each map is a non-negative field scaled so that it sums to its head's S_img.
    """
    rng = np.random.default_rng(seed)
    h, w = grid
    roles = np.full((layers, heads), "sink", dtype=object)
    for lh in [(1, 3), (1, 6), (2, 0), (3, 4), (4, 7), (5, 2)]:
        roles[lh] = "diffuse"
    for lh in [(2, 7), (3, 3), (4, 4), (5, 0), (2, 4)]:
        roles[lh] = "scattered"
    for lh in [(0, 5), (1, 1), (4, 3)]:
        roles[lh] = "single"
    for lh in LOCALIZERS:
        roles[lh] = "localizer"
    maps = np.zeros((n, layers, heads, h, w))
    boxes = np.zeros((n, 4))  # xyxy grid units
    for i in range(n):
        bh, bw = rng.integers(3, 7, size=2)
        r0, c0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        boxes[i] = [c0, r0, c0 + bw, r0 + bh]
        cy, cx = r0 + (bh - 1) / 2, c0 + (bw - 1) / 2
        for layer in range(layers):
            for head in range(heads):
                role = roles[layer, head]
                noise = rng.uniform(0, 1, size=(h, w))
                if role == "sink":
                    field, s = 0.5 + noise, rng.uniform(0.01, 0.08)
                elif role == "diffuse":
                    field = _gauss(h, w, *rng.uniform(0, h, 2), 4, 4) + 1.0 * noise
                    s = rng.uniform(0.3, 0.6)
                elif role == "scattered":
                    field = 0.05 * noise
                    for _ in range(rng.integers(4, 7)):
                        field += _gauss(h, w, *rng.uniform(0, h, 2), 0.6, 0.6)
                    s = rng.uniform(0.4, 0.8)
                elif role == "single":
                    field = 0.02 * noise
                    field[rng.integers(0, h), rng.integers(0, w)] = 1.0
                    s = rng.uniform(0.5, 0.8)
                else:  # localizer
                    if rng.uniform() < 0.15:
                        ty, tx = rng.uniform(0, h, 2)
                    else:
                        ty, tx = cy, cx
                    field = _gauss(h, w, ty, tx, bh / 3, bw / 3) + 0.03 * noise
                    if rng.uniform() < 0.4:  # a weaker second blob elsewhere
                        field += 0.5 * _gauss(h, w, *rng.uniform(0, h, 2), 0.7, 0.7)
                    s = rng.uniform(0.55, 0.9)
                maps[i, layer, head] = s * field / field.sum()
    return maps.astype(np.float32), boxes


def coco_person_grid_box(image_size: tuple[int, int] = IMAGE_SIZE,
                         grid: tuple[int, int] = LLAVA_GRID,
                         box: tuple[float, ...] = PERSON_BOX) -> np.ndarray:
    """[4] xyxy grid box: the whole cells covering the pixel ``box`` of an ``image_size``
    photo under LLaVA-1.5's pad-to-square geometry (what a perfect pseudo mask gives)."""
    g = Geometry.pad_to_square(image_size, grid).image_box_to_grid(np.asarray(box))
    return np.array([np.floor(g[0]), np.floor(g[1]), np.ceil(g[2]), np.ceil(g[3])])


def _tiny_llava_case():
    """Eager attentions, last rows, positions, grid and capture-path attn of a tiny LLaVA."""
    import torch
    from PIL import Image
    from tiny_models import tiny_llava

    from minilocal.adapters import LlavaAdapter
    from minilocal.attention import last_token_attention

    torch.set_num_threads(1)
    model, processor = tiny_llava(attn_implementation="eager", seed=0)
    adapter = LlavaAdapter(model, processor)
    rng = np.random.default_rng(SEED)
    image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    prep = adapter.prepare(image, EXPR)
    with torch.no_grad():
        out = model(**prep.inputs, output_attentions=True, use_cache=False)
    attentions = np.stack([a.float().numpy() for a in out.attentions])  # [L, 1, H, T, T]
    rows = last_token_attention(model, prep.inputs, None, adapter.decoder())[0]  # [L, H, T]
    attn, _ = adapter.attention(image, EXPR, method="capture")  # [L, H, h, w]
    return {
        "attentions": attentions,
        "positions": prep.positions.numpy().astype(np.int64),
        "grid": np.array(prep.grid, dtype=np.int64),
        "rows": rows.numpy(),
        "attn": attn,
    }


def realistic_inputs() -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(arrays for ``realistic.npz`` keyed ``<checker>.<arg>``, expected answers that do
    not come from a reference function applied to them: the tiny LLaVA's capture path)."""
    tiny = _tiny_llava_case()
    maps, boxes = synthetic_attention()
    s = criteria.s_img(maps)  # [N, L, H]
    passing = criteria.passes_s_img(s)  # [N, L, H]
    entropy = criteria.spatial_entropy(maps)  # [N, L, H]
    heads = selection.top_heads(selection.selection_frequency(entropy, passing), k=3)
    sample = 4
    combined = grounding.combine_heads(maps[sample], heads)  # [h, w]
    mask = grounding.pseudo_mask(combined)
    geometry = Geometry.pad_to_square(IMAGE_SIZE, GRID)
    ious, pred_boxes = [], []
    for i in range(SAMPLES):
        g = grounding.ground(maps[i], heads, geometry)
        gt = geometry.grid_box_to_image(boxes[i])
        pred_boxes.append(g.box)
        ious.append(metrics.box_iou(g.box, gt))
    # the realistic entropy map: a localizing head with a second, weaker blob
    ent_maps = maps[:, LOCALIZERS[0][0], LOCALIZERS[0][1]]  # [N, h, w]
    n_comp = [criteria.entropy_components(m).n_components for m in ent_maps]
    pick = int(np.argmax(n_comp))
    arrays = {
        "last_token_attention.attentions": tiny["attentions"],
        "last_token_attention.positions": tiny["positions"],
        "last_token_attention.grid": tiny["grid"],
        "s_img.rows": tiny["rows"],
        "s_img.positions": tiny["positions"],
        "find_elbow.values": s.mean(axis=0).ravel(),
        "spatial_entropy.map": ent_maps[pick],
        "selection_frequency.entropy": entropy,
        "selection_frequency.passing": passing,
        "pseudo_mask.combined": combined,
        "convex_hull.mask": mask,
        "grid_box.mask": mask,
        "grid_box_to_image.box_grid": coco_person_grid_box(),
        "grid_box_to_image.grid": np.array(LLAVA_GRID, dtype=np.int64),
        "grid_box_to_image.image_size": np.array(IMAGE_SIZE, dtype=np.int64),
        "box_iou.pred": pred_boxes[sample],
        "box_iou.gt": geometry.grid_box_to_image(boxes[sample]),
        "acc_at.ious": np.array(ious),
    }
    fixed = {"last_token_attention": tiny["attn"]}
    return arrays, fixed


# ----------------------------------------------------------------------------------------
# Expected answers
# ----------------------------------------------------------------------------------------


def compute_expected(fixed: dict[str, object] | None = None) -> dict[str, dict[str, object]]:
    """Every case's expected answer (encoded for JSON), from :data:`REFERENCES`.

    Args:
        fixed: Answers of realistic cases that do not come from a reference function (the
            tiny LLaVA's capture path); default: the stored ones.
    """
    out: dict[str, dict[str, object]] = {}
    for name in checks.CHECKERS:
        ref = REFERENCES[name]
        out[name] = {}
        for case in checks.cases(name):
            if case.name.startswith("realistic") and fixed is not None and name in fixed:
                value = fixed[name]
            elif case.name.startswith("realistic") and name in ("last_token_attention",):
                value = checks.decode_expected(checks._expected_all()[name][case.name])
            else:
                value = ref(*case.args, **case.kwargs)
            out[name][case.name] = checks.encode_expected(value)
    return out


def write(arrays: dict[str, np.ndarray], expected: dict) -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA_DIR / checks.REALISTIC_FILE, **arrays)
    lines = ["{"]
    for i, name in enumerate(sorted(expected)):
        lines.append(f"  {json.dumps(name)}: {{")
        items = sorted(expected[name].items())
        for j, (case, value) in enumerate(items):
            comma = "," if j < len(items) - 1 else ""
            lines.append(f"    {json.dumps(case)}: {json.dumps(value)}{comma}")
        lines.append("  }" + ("," if i < len(expected) - 1 else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"  # one line per case: readable diffs
    (DATA_DIR / checks.EXPECTED_FILE).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored data only")
    args = ap.parse_args(argv)
    if args.check:
        stored = json.loads((DATA_DIR / checks.EXPECTED_FILE).read_text(encoding="utf-8"))
        fresh = compute_expected()
        bad = [f"{n}/{c}" for n in fresh for c in fresh[n] if fresh[n][c] != stored[n].get(c)]
        print("drifted: " + ", ".join(bad) if bad else "checks data up to date")
        return 1 if bad else 0
    arrays, fixed = realistic_inputs()
    # the cases read the realistic inputs from disk: write them first
    write(arrays, {})
    checks._realistic_all.cache_clear()
    checks._expected_all.cache_clear()
    write(arrays, compute_expected(fixed))
    checks._expected_all.cache_clear()
    print(f"wrote {DATA_DIR / checks.REALISTIC_FILE} and {DATA_DIR / checks.EXPECTED_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
