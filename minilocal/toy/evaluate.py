"""Find the shapes LVLM's heads and measure how well they ground: ``python -m minilocal.toy.evaluate``.

Two stages, each a function of the package's public steps (nothing here is special to the
toy model but the dataset):

1. :func:`search_heads` runs the paper's head search (:func:`minilocal.selection.find_heads`,
   default settings) on the "selection" split and writes ``heads.json`` beside the model.
2. :func:`heldout_report` grounds every item of the "heldout" split (never used for any
   choice) with the chosen heads and the paper's default box step, and puts the result
   next to four references measured in the same run:

   * ``mean_of_all_heads``: the same box step on the mean map of all heads;
   * ``random_head``: the expected score of one head drawn at random (mean over all heads),
     and one seeded draw;
   * ``best_single_head``: the best single head, chosen ON the held-out split itself (an
     upper bound no honest method can claim);
   * ``centre_box``: a box of the mean selection-split size in the middle of the image.

   It also reports the mIoU of the pseudo mask (upsampled to the image) and, when a SAM is
   given, of the SAM-refined mask, and the selected heads' Acc@0.5 broken down by
   expression kind, object size, fill, shape and image size (:func:`breakdowns`), with the
   median ratio of the predicted box's area to the true box's (above 1: boxes too large),
   and the box step's own limit: its Acc@0.5 on an ideal head's map (:func:`ideal_attn`).

``--world drawn`` (or ``wide``) evaluates on another world of
:data:`minilocal.toy.world.WORLDS` than the one the model was trained on, e.g. pictures
as a user draws them (:data:`minilocal.toy.world.DRAWN`).

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..errors import DatasetError
from ..grounding import ground
from ..metrics import box_iou, mask_iou
from ..selection import HeadTable, find_heads, format_head
from . import lvlm
from . import world as W

#: Sizes of the splits used for the shipped model's figures.
SELECTION_ITEMS = 300
HELDOUT_ITEMS = 500


def collect_attention(adapter, items, progress: bool = True):
    """Last-token attention of every item (one prefill forward each).

    Returns:
        (attn [N, L, H, h, w] float32, list of Prepared).
    """
    maps, preps = [], []
    for it in tqdm(items, desc="attention", unit="item", disable=not progress):
        a, p = adapter.attention(it.image, it.expr)
        maps.append(a)
        preps.append(p)
    return np.stack(maps), preps


def search_heads(
    model_dir: str | Path | None = None,
    *,
    n_items: int = SELECTION_ITEMS,
    n: int = 200,
    repeats: int = 5,
    seed: int = 0,
    k: int = 3,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> HeadTable:
    """The paper's head search on the shapes "selection" split.

    Args:
        model_dir: Folder of a shapes LVLM (default: the shipped one).
        n_items: Size of the selection pool (items 0 .. n_items-1).
        n, repeats, seed, k: As in :func:`minilocal.selection.find_heads` (each repeat draws
            ``n`` of the pool).
        cache_dir: Resumable per-item cache (an interrupted search resumes).
        out: Where to write the table (default: ``heads.json`` in the model folder).

    Returns:
        The head table (source "measured").

    Book: ``book/04_selection.ipynb``.
    """
    model, processor = lvlm.load_toy(model_dir)
    adapter = get_adapter(model, processor)
    pool = W.shapes_dataset("selection", n_items, cfg=lvlm.world_of(model))
    table = find_heads(
        lambda it: adapter.attention(it.image, it.expr)[0],
        pool,
        n=n,
        repeats=repeats,
        seed=seed,
        k=k,
        cache_dir=cache_dir,
        progress=progress,
        model_id=adapter.model_id(),
        prompt_template=adapter.template,
        notes=f"shapes world, selection split items 0..{n_items - 1}; "
        f"python -m minilocal.toy.evaluate --search",
    )
    target = Path(out) if out is not None else Path(model_dir or lvlm.DEFAULT_MODEL_DIR) / "heads.json"
    table.to_json(target)
    return table


def _ious(boxes, gts) -> np.ndarray:
    return np.array([0.0 if b is None else float(box_iou(b, g)) for b, g in zip(boxes, gts)])


def _acc_and_iou(boxes, gts) -> tuple[float, float]:
    ious = _ious(boxes, gts)
    return float((ious >= 0.5).mean()), float(ious.mean())


def _area(box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _area_ratios(boxes, gts) -> np.ndarray:
    """Predicted box area / true box area per item (0 where there is no box)."""
    return np.array([0.0 if b is None else _area(b) / _area(g) for b, g in zip(boxes, gts)])


#: Bins of the breakdowns: the referent's longer box side as a fraction of the image side
#: (on the shipped model's 24 x 24 grid, 0.15 is 3.6 cells), and the image side in pixels
#: (the model's canvas is 96: below it the processor enlarges the picture, above it shrinks).
OBJECT_SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<0.15", 0.0, 0.15), ("0.15-0.25", 0.15, 0.25), ("0.25-0.35", 0.25, 0.35),
    (">=0.35", 0.35, np.inf))
IMAGE_SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<96", 0, 96), ("96", 96, 97), ("97-143", 97, 144), (">=144", 144, np.inf))


def _bin(value: float, bins) -> str:
    return next(name for name, lo, hi in bins if lo <= value < hi)


def item_groups(item) -> dict[str, str]:
    """The group of one shapes item in each breakdown of the report.

    Returns:
        {"object_size": bin of the longer box side / image side (:data:`OBJECT_SIZE_BINS`),
        "fill": "pattern" or "flat", "shape": the referent's kind, "image_size": bin of the
        image side in pixels (:data:`IMAGE_SIZE_BINS`)}.
    """
    w, h = item.image.size
    side = max(item.box[2] - item.box[0], item.box[3] - item.box[1]) / max(w, h)
    return {
        "object_size": _bin(float(side), OBJECT_SIZE_BINS),
        "fill": item.meta.get("fill", "pattern"),
        "shape": item.meta["shape"],
        "image_size": _bin(float(max(w, h)), IMAGE_SIZE_BINS),
    }


def breakdowns(items, boxes, ideal_boxes=None) -> dict[str, dict[str, dict]]:
    """Acc@0.5 of the boxes by object size, fill, shape and image size.

    Args:
        items: The shapes items.
        boxes: The predicted box of each item ([4] xyxy or None).
        ideal_boxes: Optionally, the box of the same box step on each item's
            :func:`ideal_attn` (the box step's own limit in each group).

    Returns:
        {"by_object_size" | "by_fill" | "by_shape" | "by_image_size": {group: {"n",
        "acc@0.5", "mean_box_iou", "median_box_area_ratio"[, "acc@0.5_ideal_map"]}}},
        groups in bin order (only the groups that occur).

    Book: ``book/05_grounding.ipynb``.
    """
    gts = [it.box for it in items]
    ious, ratios = _ious(boxes, gts), _area_ratios(boxes, gts)
    ideal = None if ideal_boxes is None else _ious(ideal_boxes, gts)
    groups = [item_groups(it) for it in items]
    order = {"object_size": [b[0] for b in OBJECT_SIZE_BINS], "fill": ["pattern", "flat"],
             "shape": list(W.SHAPES), "image_size": [b[0] for b in IMAGE_SIZE_BINS]}
    out = {}
    for key, names in order.items():
        table = {}
        for name in names:
            idx = [i for i, g in enumerate(groups) if g[key] == name]
            if idx:
                table[name] = {"n": len(idx),
                               "acc@0.5": round(float((ious[idx] >= 0.5).mean()), 4),
                               "mean_box_iou": round(float(ious[idx].mean()), 4),
                               "median_box_area_ratio": round(float(np.median(ratios[idx])), 3)}
                if ideal is not None:
                    table[name]["acc@0.5_ideal_map"] = round(float((ideal[idx] >= 0.5).mean()), 4)
        out[f"by_{key}"] = table
    return out


def ideal_attn(item, geometry) -> np.ndarray:
    """[1, 1, h, w] attention of an ideal head: the referent's mask averaged over each cell.

    A head that looks at the referent and nowhere else. Its box under a threshold is the
    best that box step can do on this grid: what it loses there is the box step's, not
    the heads'.

    Args:
        item: A shapes item (its mask is used).
        geometry: The item's grid-to-image map (from the adapter's ``Prepared``).

    Book: ``book/05_grounding.ipynb``.
    """
    cells = geometry.image_mask_to_grid(item.mask)  # [h, w] share of each cell on the object
    return (cells / max(float(cells.sum()), 1e-12))[None, None]


#: Variants of the box step scored beside the paper's (same maps, no new forward), to see
#: whether loose boxes come from the threshold: never the method's default.
BOX_STEP_VARIANTS: dict[str, dict] = {
    "> 0.3 x max": {"threshold": 0.3},
    "> 0.5 x max": {"threshold": 0.5},
    "> mean, largest component": {"component": "largest"},
}


def heldout_report(
    model_dir: str | Path | None = None,
    heads: HeadTable | list | None = None,
    *,
    n_items: int = HELDOUT_ITEMS,
    sam=None,
    seed: int = 0,
    split: str = "heldout",
    start: int = 0,
    world: W.WorldConfig | str | None = None,
    progress: bool = True,
) -> dict:
    """Held-out REC/RES figures of the chosen heads next to the references (module doc).

    Args:
        model_dir: Folder of a shapes LVLM (default: the shipped one).
        heads: A head table or (layer, head) pairs (default: ``heads.json`` of the model).
        n_items: Held-out items 0 .. n_items-1.
        sam: A :class:`minilocal.segmentation.SamRefiner` for the RES figure, or None.
        seed: Seed of the random-head draw.
        split: "heldout" (the shipped figures) or "selection" (to compare candidate
            models without looking at the held-out split; use ``start`` past the items
            the head search used).
        start: First item of the split.
        world: The world the items come from: None (the model's own training world), a
            :class:`~minilocal.toy.world.WorldConfig`, or a name of
            :data:`minilocal.toy.world.WORLDS` ("shapes", "drawn", "wide").

    Returns:
        A JSON-able dict of figures (Acc@0.5 as fractions) and the settings.

    Book: ``book/05_grounding.ipynb``.
    """
    t0 = time.time()
    folder = Path(model_dir) if model_dir is not None else lvlm.DEFAULT_MODEL_DIR
    model, processor = lvlm.load_toy(folder)
    adapter = get_adapter(model, processor)
    if heads is None:
        heads = HeadTable.from_json(folder / "heads.json")
    chosen = [tuple(h) for h in (heads.heads if isinstance(heads, HeadTable) else heads)]
    if world is None:
        world = lvlm.world_of(model)
    elif isinstance(world, str):
        if world not in W.WORLDS:
            raise DatasetError(f"unknown world {world!r}",
                               f"use one of {', '.join(W.WORLDS)} (or a WorldConfig).")
        world = W.WORLDS[world]
    if split not in ("heldout", "selection"):
        raise ValueError(f"split {split!r}: use 'heldout' or 'selection'")
    items = list(W.shapes_dataset(split, n_items, start, cfg=world))
    attn, preps = collect_attention(adapter, items, progress)  # [N, L, H, h, w]
    N, L, H = attn.shape[:3]
    gts = [it.box for it in items]

    def boxes_for(head_list):
        return [ground(attn[i], head_list, preps[i].geometry) for i in range(N)]

    sel = boxes_for(chosen)
    acc_sel, iou_sel = _acc_and_iou([g.box for g in sel], gts)
    all_heads = [(layer, h) for layer in range(L) for h in range(H)]
    acc_mean, _ = _acc_and_iou([g.box for g in boxes_for(all_heads)], gts)
    single = np.zeros((L, H))
    for layer, h in tqdm(all_heads, desc="single heads", disable=not progress):
        single[layer, h] = _acc_and_iou([g.box for g in boxes_for([(layer, h)])], gts)[0]
    rng = np.random.default_rng(seed)
    drawn = all_heads[int(rng.integers(len(all_heads)))]
    best = np.unravel_index(int(np.argmax(single)), single.shape)

    # centre box: the mean relative box size of the selection split, centred
    sel_items = W.shapes_dataset("selection", 200, cfg=world)
    rel = np.array([[(it.box[2] - it.box[0]) / it.image.size[0],
                     (it.box[3] - it.box[1]) / it.image.size[1]] for it in sel_items]).mean(0)
    centre = []
    for it in items:
        w_, h_ = it.image.size
        bw, bh = rel[0] * w_, rel[1] * h_
        centre.append(np.array([(w_ - bw) / 2, (h_ - bh) / 2, (w_ + bw) / 2, (h_ + bh) / 2]))
    acc_centre, _ = _acc_and_iou(centre, gts)

    pseudo_iou = [mask_iou(g.mask, it.mask) for g, it in zip(sel, items)]
    ideal = [ideal_attn(it, p.geometry) for it, p in zip(items, preps)]  # [1, 1, h, w] each
    ideal_boxes = {name: [ground(a, [(0, 0)], p.geometry, **kw).box for a, p in zip(ideal, preps)]
                   for name, kw in {"paper": {}, **BOX_STEP_VARIANTS}.items()}
    report = {
        "split": split,
        "first_item": start,
        "n_heldout": N,
        "heads": [format_head(h) for h in chosen],
        # heads whose attention training pulled onto the referent (train --plant), if any:
        # the search was not told about them
        "planted_heads": [format_head(tuple(h)) for h in
                          getattr(model.config, "minilocal_planted_heads", None) or []],
        "acc@0.5": {
            "selected_heads": round(acc_sel, 4),
            "mean_of_all_heads": round(acc_mean, 4),
            "random_head_expected": round(float(single.mean()), 4),
            "random_head_draw": {"head": format_head(drawn), "acc": round(float(single[drawn]), 4)},
            "best_single_head_on_heldout": {"head": format_head(best),
                                            "acc": round(float(single[best]), 4)},
            "centre_box": round(acc_centre, 4),
        },
        "mean_box_iou_selected": round(iou_sel, 4),
        "ratio_selected_vs_mean_of_all": (round(acc_sel / acc_mean, 2) if acc_mean > 0
                                          else None),
        "single_head_rank_of_selected": {
            format_head(h): int((single > single[h]).sum()) + 1 for h in chosen
        },
        "top5_single_heads_on_heldout": [
            {"head": format_head(np.unravel_index(i, single.shape)),
             "acc": round(float(single.ravel()[i]), 4)}
            for i in np.argsort(-single.ravel())[:5]
        ],
        "miou_pseudo_mask": round(float(np.mean(pseudo_iou)), 4),
        "by_kind": {},
        # per held-out item, in order: the box IoU of the selected heads (tests recompute
        # a prefix of these from the shipped weights)
        "box_iou_selected": [round(float(v), 4) for v in _ious([g.box for g in sel], gts)],
        "world": world.name,
        "median_box_area_ratio_selected": round(
            float(np.median(_area_ratios([g.box for g in sel], gts))), 3),
        **breakdowns(items, [g.box for g in sel], ideal_boxes["paper"]),
        "box_step_variants_selected": {
            name: round(_acc_and_iou([ground(attn[i], chosen, preps[i].geometry, **kw).box
                                      for i in range(N)], gts)[0], 4)
            for name, kw in BOX_STEP_VARIANTS.items()
        },
        # the same box steps on an ideal head's map (the referent's mask on the grid): the
        # box step's own limit, whatever the heads
        "acc@0.5_ideal_map": {name: round(_acc_and_iou(b, gts)[0], 4)
                              for name, b in ideal_boxes.items()},
    }
    for kind in ("attribute", "relational"):
        idx = [i for i, it in enumerate(items) if it.meta["kind"] == kind]
        if idx:
            a, _ = _acc_and_iou([sel[i].box for i in idx], [gts[i] for i in idx])
            report["by_kind"][kind] = {"n": len(idx), "acc@0.5": round(a, 4)}
    if sam is not None:
        sam_iou = []
        for g, it in zip(tqdm(sel, desc="SAM", disable=not progress), items):
            if g.box is None:
                sam_iou.append(0.0)
                continue
            sam_iou.append(mask_iou(sam.refine(it.image, g.box).mask, it.mask))
        report["miou_sam"] = round(float(np.mean(sam_iou)), 4)
    else:
        report["miou_sam"] = None
    report["seconds"] = round(time.time() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m minilocal.toy.evaluate [--model DIR] [--search]``."""
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.toy.evaluate",
        description="Head search on the shapes selection split and held-out figures.",
    )
    ap.add_argument("--model", default=None, help="shapes LVLM folder (default: shipped)")
    ap.add_argument("--search", action="store_true",
                    help="run the head search first and write heads.json beside the model")
    ap.add_argument("--selection-items", type=int, default=SELECTION_ITEMS)
    ap.add_argument("--n", type=int, default=200, help="samples per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--heldout-items", type=int, default=HELDOUT_ITEMS)
    ap.add_argument("--split", default="heldout", choices=["heldout", "selection"],
                    help="evaluate on this split (selection: to compare candidate models)")
    ap.add_argument("--start", type=int, default=0, help="first item of the split")
    ap.add_argument("--world", default="model", choices=["model", *W.WORLDS],
                    help="world of the items: the model's own (default), or a named one "
                         "(drawn: pictures as a user draws them; wide: flat and patterned "
                         "fills, small objects, 64-200 px images)")
    ap.add_argument("--sam", default="shapes",
                    help="SAM for the RES figure: 'shapes' (embedded), a checkpoint, or 'none'")
    ap.add_argument("--cache-dir", default=None, help="resumable head-search cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--out", default=None, help="also write the report as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.search:
        table = search_heads(a.model, n_items=a.selection_items, n=a.n, repeats=a.repeats,
                             cache_dir=a.cache_dir)
        print(f"heads: {table.heads_str()}")
    sam = None
    if a.sam != "none":
        from ..segmentation import load_sam

        sam = load_sam("segment-anything", a.sam)
    report = heldout_report(a.model, n_items=a.heldout_items, sam=sam, split=a.split,
                            start=a.start, world=None if a.world == "model" else a.world)
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
