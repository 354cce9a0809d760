"""The held-out report's breakdown by object size, fill, shape and image size, and the
report on another world than the model's own (pictures as a user draws them)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from minilocal.errors import DatasetError
from minilocal.metrics import box_iou
from minilocal.toy import evaluate, lvlm, train
from minilocal.toy import world as W

TINY = lvlm.ModelSpec(image_size=32, patch_size=4, vision_hidden=16, layers=2, heads=2,
                      kv_heads=2, hidden=32, intermediate=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_breakdown")
    cfg = train.TrainConfig(spec=TINY, steps=1, batch=1, questions=1, warmup=1, probe_every=0,
                            probe_items=1)
    train.train(cfg, out, progress=False)
    return out


def _item_with_box(item, box, side):
    """The item with another box on an image of another side (for the bins)."""
    from PIL import Image

    return replace(item, box=np.asarray(box, float),
                   load_image=lambda: Image.new("RGB", (side, side), W.BACKGROUND))


def test_groups_follow_the_bins():
    it = W.shapes_item("heldout", 0)
    cases = [((0, 0, 10, 5), 100, "<0.15", "97-143"),  # longer side 10 of 100
             ((0, 0, 15, 15), 100, "0.15-0.25", "97-143"),  # 0.15 is in the upper bin
             ((0, 0, 30, 20), 96, "0.25-0.35", "96"),
             ((0, 0, 10, 40), 80, ">=0.35", "<96"),
             ((0, 0, 50, 50), 144, "0.25-0.35", ">=144")]
    for box, side, size_bin, image_bin in cases:
        g = evaluate.item_groups(_item_with_box(it, box, side))
        assert (g["object_size"], g["image_size"]) == (size_bin, image_bin), (box, side)
        assert g["fill"] == it.meta["fill"] and g["shape"] == it.meta["shape"]


def test_breakdown_counts_and_scores_each_group():
    items = list(W.shapes_dataset("heldout", 24, cfg=W.WIDE))
    # exact boxes for even items, none for odd ones, a box 1.5 times as wide for every
    # third even item
    boxes = []
    for i, it in enumerate(items):
        if i % 2:
            boxes.append(None)
        elif i % 3 == 0:
            b = it.box.copy()
            b[2] = b[0] + 1.5 * (b[2] - b[0])  # IoU 2/3: counts; area ratio 1.5
            boxes.append(b)
        else:
            boxes.append(it.box.copy())
    rep = evaluate.breakdowns(items, boxes)
    assert set(rep) == {"by_object_size", "by_fill", "by_shape", "by_image_size"}
    groups = [evaluate.item_groups(it) for it in items]
    for key, table in rep.items():
        name = key[len("by_"):]
        assert sum(v["n"] for v in table.values()) == len(items)
        for group, v in table.items():
            idx = [i for i, g in enumerate(groups) if g[name] == group]
            assert v["n"] == len(idx)
            assert v["acc@0.5"] == round(sum(i % 2 == 0 for i in idx) / len(idx), 4)
            ious = [0.0 if boxes[i] is None else float(box_iou(boxes[i], items[i].box))
                    for i in idx]
            assert v["mean_box_iou"] == pytest.approx(np.mean(ious), abs=1e-4)
            ratios = [0.0 if i % 2 else (1.5 if i % 3 == 0 else 1.0) for i in idx]
            assert v["median_box_area_ratio"] == pytest.approx(np.median(ratios), abs=1e-3)
    assert set(rep["by_fill"]) == {"pattern", "flat"}  # the wide world has both


def test_report_on_the_drawn_pictures(tiny):
    rep = evaluate.heldout_report(tiny, [(0, 0), (1, 1)], n_items=6, world="drawn",
                                  progress=False)
    assert rep["world"] == "drawn" and rep["n_heldout"] == 6
    assert set(rep["by_fill"]) == {"flat"} and set(rep["by_shape"]) <= {"circle", "square"}
    ious = np.array(rep["box_iou_selected"])
    for key in ("by_object_size", "by_fill", "by_shape", "by_image_size"):
        assert sum(v["n"] for v in rep[key].values()) == 6
    flat = rep["by_fill"]["flat"]
    assert flat["acc@0.5"] == pytest.approx(float((ious >= 0.5).mean()), abs=1e-4)
    assert flat["acc@0.5"] == rep["acc@0.5"]["selected_heads"]
    assert set(rep["box_step_variants_selected"]) == set(evaluate.BOX_STEP_VARIANTS)
    assert set(rep["acc@0.5_ideal_map"]) == {"paper", *evaluate.BOX_STEP_VARIANTS}
    assert all("acc@0.5_ideal_map" in v for v in rep["by_object_size"].values())
    # the same items as the drawn set itself
    same = evaluate.heldout_report(tiny, [(0, 0), (1, 1)], n_items=6, world=W.DRAWN,
                                   progress=False)
    assert same["box_iou_selected"] == rep["box_iou_selected"]
    json.dumps(rep)
    with pytest.raises(DatasetError, match="use one of"):
        evaluate.heldout_report(tiny, [(0, 0)], n_items=1, world="photos", progress=False)


def test_default_report_keeps_the_documented_fields(tiny):
    shipped = json.loads((lvlm.DEFAULT_MODEL_DIR / "evaluation_report.json").read_text())
    rep = evaluate.heldout_report(tiny, [(0, 0)], n_items=3, progress=False)
    assert set(shipped) <= set(rep)  # new fields only add to the documented ones
    assert rep["world"] == "shapes" and set(rep["by_image_size"]) == {"96"}
    assert set(rep["by_fill"]) == {"pattern"}


def test_ideal_map_sits_on_the_referent_and_bounds_the_box_step():
    from minilocal.geometry import Geometry
    from minilocal.grounding import ground

    for i in range(5):
        it = W.shapes_item("heldout", i, W.WIDE)
        geo = Geometry.pad_to_square(it.image.size, (24, 24))
        a = evaluate.ideal_attn(it, geo)  # [1, 1, 24, 24]
        assert a.shape == (1, 1, 24, 24) and abs(a.sum() - 1) < 1e-9 and (a >= 0).all()
        on = geo.image_mask_to_grid(it.mask) > 0
        assert (a[0, 0][~on] == 0).all()  # nothing off the referent's cells
        # half the maximum keeps the cells mostly covered: a box close to the object's
        box = ground(a, [(0, 0)], geo, threshold=0.5).box
        assert box_iou(box, it.box) > 0.6
        # the paper's threshold keeps every cell the object touches, and more
        paper = ground(a, [(0, 0)], geo).box
        assert paper[0] <= box[0] and paper[1] <= box[1] and paper[2] >= box[2] and paper[3] >= box[3]
