"""The shapes world: deterministic, unique referents, disjoint splits, consistent boxes."""

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilocal.data import GroundingDataset, GroundingItem
from minilocal.errors import DatasetError
from minilocal.toy import world as W


def _digest(item: GroundingItem) -> str:
    return hashlib.sha1(np.asarray(item.image).tobytes()).hexdigest()


def test_items_are_deterministic_and_independent_of_order():
    a = W.shapes_item("heldout", 42)
    W.shapes_item("heldout", 7)  # other items in between change nothing
    b = W.shapes_item("heldout", 42)
    assert a.item_id == "shapes/heldout/000042" and a.split == "heldout"
    assert a.expr == b.expr and np.array_equal(a.box, b.box)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.mask, b.mask)
    ds = W.shapes_dataset("heldout", 3, start=41)
    assert isinstance(ds, GroundingDataset) and ds.ids[1] == a.item_id
    assert ds[1].expr == a.expr


def test_splits_are_disjoint():
    digests = {s: {_digest(W.shapes_item(s, i)) for i in range(40)} for s in W.SPLIT_SEEDS}
    assert all(len(d) == 40 for d in digests.values())
    splits = list(digests)
    for i, s in enumerate(splits):
        for t in splits[i + 1:]:
            assert not digests[s] & digests[t], (s, t)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, 10**6), split=st.sampled_from(sorted(W.SPLIT_SEEDS)))
def test_expression_picks_exactly_the_referent(index, split):
    s = W.shapes_sample(split, index, questions=3)
    for t, expr, kind in zip(s.targets, s.exprs, s.kinds):
        assert W.referents(expr, s.scene.objects) == [t], expr
        assert set(expr.split()) <= set(W.VOCABULARY)
        assert kind in ("attribute", "relational")
    assert len(set(s.targets)) == len(s.targets)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 10**6))
def test_box_and_mask_agree(index):
    item = W.shapes_item("train", index)
    image, mask, box = np.asarray(item.image), item.mask, item.box
    S = W.WorldConfig().image_size
    assert image.shape == (S, S, 3) and image.dtype == np.uint8
    assert mask.shape == (S, S) and mask.dtype == bool and mask.any()
    rows, cols = np.nonzero(mask)
    assert np.array_equal(box, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    # the mask lies on the target's colour, not on the background
    # (the texture darkens some pixels to 0.6 of the colour: either shade counts)
    color = np.array(W.COLORS[item.meta["color"]], dtype=float)
    inside = image[mask].astype(float)
    dist = np.minimum(np.abs(inside - color).sum(1), np.abs(inside - 0.6 * color).sum(1))
    assert np.median(dist) < 30
    assert 2 <= item.meta["n_objects"] <= W.WorldConfig().max_objects


def test_objects_do_not_overlap():
    for i in range(30):
        s = W.shapes_sample("selection", i)
        assert s.scene.masks.sum(0).max() == 1


def test_attribute_only_expressions_are_minimal():
    seen = 0
    for i in range(60):
        s = W.shapes_sample("heldout", i, questions=4)
        for t, expr, kind in zip(s.targets, s.exprs, s.kinds):
            if kind != "attribute":
                continue
            seen += 1
            words = expr.split()
            n_attrs = len(words) - 2 + (words[-1] in W.SHAPES)  # "the [size] [colour] noun"
            assert n_attrs == len(W.minimal_descriptions(s.scene.objects, t)[0]), expr
    assert seen > 50


def test_a_share_is_relational():
    kinds = [W.shapes_item("selection", i).meta["kind"] for i in range(150)]
    share = kinds.count("relational") / len(kinds)
    assert 0.1 < share < 0.5


def test_bad_split_and_index_raise():
    with pytest.raises(DatasetError, match="use one of"):
        W.shapes_item("test", 0)
    with pytest.raises(DatasetError):
        W.shapes_item("train", -1)


def test_texture_changes_pixels_not_items():
    from dataclasses import replace

    assert W.WorldConfig().texture  # the shipped model's world
    flat = W.shapes_item("heldout", 5, replace(W.WorldConfig(), texture=False))
    tex = W.shapes_item("heldout", 5)
    assert flat.expr == tex.expr and np.array_equal(flat.box, tex.box)
    assert np.array_equal(flat.mask, tex.mask)
    from scipy import ndimage

    scene = W.shapes_sample("heldout", 5, replace(W.WorldConfig(), texture=False)).scene
    near = ndimage.binary_dilation(scene.masks.any(0), iterations=2)
    a, b = np.asarray(flat.image), np.asarray(tex.image)
    assert np.array_equal(a[~near], b[~near])  # background untouched
    assert not np.array_equal(a[flat.mask], b[flat.mask]) or flat.meta["shape"] == "circle"


@pytest.mark.parametrize("shape", W.SHAPES)
def test_texture_tells_the_kind_inside_any_patch(shape):
    """Inside an object, every 4 x 4 window shows the kind's pattern (period 4 pixels)."""
    p = W._pattern(shape, 24, 2)  # [24, 24] image pixels, 2-pixel bands (96 px image)
    windows = [p[y:y + 4, x:x + 4] for y in range(0, 20, 3) for x in range(0, 20, 3)]
    kind = W.TEXTURES[shape]
    for w in windows:
        if kind == "solid":
            assert not w.any()
        elif kind == "horizontal stripes":
            assert (w == w[:, :1]).all() and w[:, 0].any() and not w[:, 0].all()
        elif kind == "vertical stripes":
            assert (w == w[:1, :]).all() and w[0].any() and not w[0].all()
        else:
            assert (w[:, :2] != w[:, 2:]).all() or (w[:2] != w[2:]).all()
