"""Options that widen the shapes world (flat fills, object scale, image sides, shape kinds,
name) and the DRAWN / WIDE presets: the default world is unchanged, every option is
deterministic per item, and boxes and masks match the drawn pixels at any image side."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from minilocal.errors import DatasetError
from minilocal.toy import lvlm
from minilocal.toy import world as W

#: sha1 of (expr, image bytes, mask bytes) of items 0-2 of each split of the default world,
#: recorded before the options existed: the shipped model's world must render the same.
DEFAULT_DIGESTS = {
    "train": "10e87eed0a482d89ee27aa586ac4a645e8fd8c3a",
    "selection": "11549a8d8e08686d0bf5c54c22fd312164607bfa",
    "heldout": "8c9f38edaa230ef66727b04ad6a05a670aed827b",
}


def _digest(items) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(it.expr.encode())
        h.update(np.asarray(it.image).tobytes())
        h.update(it.mask.tobytes())
    return h.hexdigest()


def test_default_world_renders_as_before_and_is_the_shipped_models():
    for split, want in DEFAULT_DIGESTS.items():
        assert _digest(W.shapes_item(split, i) for i in range(3)) == want, split
    model, _ = lvlm.load_toy()
    shipped = lvlm.world_of(model)
    assert shipped == W.WorldConfig() and shipped.name == "shapes"
    assert W.WORLDS["shapes"] == W.WorldConfig()
    it = W.shapes_item("heldout", 4)
    assert it.item_id == "shapes/heldout/000004" and it.dataset == "shapes"
    assert it.meta["fill"] == "pattern" and it.image.size == (96, 96)


def _world_items(cfg, split="heldout", n=4, start=0):
    return [W.shapes_item(split, i, cfg) for i in range(start, start + n)]


@pytest.mark.parametrize("cfg", [W.DRAWN, W.WIDE, replace(W.WorldConfig(), flat=0.3)],
                         ids=["drawn", "wide", "flat0.3"])
def test_options_are_deterministic_per_item(cfg):
    a = _world_items(cfg, start=10)
    W.shapes_item("heldout", 3, cfg)  # another item in between changes nothing
    b = _world_items(cfg, start=10)
    assert _digest(a) == _digest(b)
    assert [x.item_id for x in a] == [f"{cfg.name}/heldout/{i:06d}" for i in range(10, 14)]
    for x, y in zip(a, b):
        assert np.array_equal(x.box, y.box) and x.meta == y.meta


def test_flat_one_keeps_the_scene_and_flattens_the_fill():
    flat = replace(W.WorldConfig(), flat=1.0)
    for i in range(8):
        d, f = W.shapes_item("selection", i), W.shapes_item("selection", i, flat)
        assert d.expr == f.expr and np.array_equal(d.box, f.box)
        assert np.array_equal(d.mask, f.mask) and f.meta["fill"] == "flat"
        core = ndimage.binary_erosion(f.mask, iterations=1)
        pixels = np.asarray(f.image)[core]
        assert (pixels == np.array(W.COLORS[f.meta["color"]])).all()  # one flat colour


def test_flat_share_mixes_fills_within_the_split():
    cfg = replace(W.WorldConfig(), flat=0.5)
    fills = [obj.fill for i in range(40) for obj in W.shapes_sample("train", i, cfg).scene.objects]
    share = fills.count("flat") / len(fills)
    assert 0.3 < share < 0.7
    assert W.WorldConfig().fills() == ("pattern",) and cfg.fills() == ("pattern", "flat")
    assert W.DRAWN.fills() == ("flat",)


def _check_pixels(scene):
    """Every mask sits on its object's colour (either shade) and nothing else is drawn."""
    image = np.asarray(scene.image).astype(float)  # [S, S, 3]
    S = image.shape[0]
    assert scene.masks.shape[1:] == (S, S) and scene.masks.sum(0).max() == 1
    for i, obj in enumerate(scene.objects):
        mask = scene.masks[i]
        colour = np.array(W.COLORS[obj.color], float)
        core = ndimage.binary_erosion(mask, iterations=1)
        if core.any():
            # the pattern darkens the colour to 0.6 of it; at a side other than 96 its bands
            # fall between pixels, so shades in between occur: distance to that segment
            inside = image[core]  # [n, 3]
            t = np.clip(inside @ colour / (colour @ colour), 0.6, 1.0)[:, None]
            dist = np.abs(inside - t * colour).sum(1)
            assert np.median(dist) < 15
        x0, y0, x1, y1 = scene.box(i)
        rows, cols = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        # the box lies inside the shape's frame (up to the pixel the frame ends in)
        fx0, fy0, fx1, fy1 = obj.box
        assert fx0 - 1 <= x0 and fy0 - 1 <= y0 and x1 <= fx1 + 1 and y1 <= fy1 + 1
    # off every object (beyond the anti-aliased rim, two pixels at a sharp corner) the
    # picture is the background
    near = ndimage.binary_dilation(scene.masks.any(0), iterations=2)
    assert (image[~near] == np.array(W.BACKGROUND, float)).all()


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 10**6), world=st.sampled_from(["drawn", "wide"]))
def test_boxes_and_masks_match_the_pixels_at_any_image_side(index, world):
    cfg = W.WORLDS[world]
    s = W.shapes_sample("train", index, cfg, questions=3)
    side = s.scene.image.shape[0]
    assert s.scene.image.shape == (side, side, 3)
    assert cfg.image_sizes[0] <= side <= cfg.image_sizes[1]
    _check_pixels(s.scene)
    for t, expr in zip(s.targets, s.exprs):
        assert W.referents(expr, s.scene.objects) == [t], expr
    assert {o.shape for o in s.scene.objects} <= set(cfg.shapes)
    item = W.shapes_item("train", index, cfg)
    assert item.image.size == (side, side) and item.mask.shape == (side, side)


def test_image_sides_cover_the_range_and_the_geometry_maps_them_back():
    sides = [W.shapes_item("heldout", i, W.DRAWN).image.size[0] for i in range(60)]
    assert min(sides) < 96 < max(sides) and 64 <= min(sides) and max(sides) <= 200
    # a grid box drawn around the referent's cells maps back around its pixel box
    from minilocal.adapters import get_adapter

    model, processor = lvlm.load_toy()
    adapter = get_adapter(model, processor)
    for i in range(3):
        it = W.shapes_item("heldout", i, W.DRAWN)
        geo = adapter.prepare(it.image, it.expr).geometry
        assert np.allclose(geo.grid_box_to_image(geo.image_box_to_grid(it.box)), it.box)


def test_scale_makes_objects_small():
    tiny = replace(W.WorldConfig(), scale=(0.35, 0.35))
    for i in range(20):
        scene = W.shapes_sample("heldout", i, tiny).scene
        S = scene.image.shape[0]
        for k, obj in enumerate(scene.objects):
            side = obj.box[2] - obj.box[0]
            lo, hi = (tiny.big if obj.size == "big" else tiny.small)
            assert 0.35 * lo * S - 1e-9 <= side <= 0.35 * hi * S + 1e-9
            assert scene.masks[k].any()
    sides = [max(it.box[2] - it.box[0], it.box[3] - it.box[1]) / it.image.size[0]
             for it in (W.shapes_item("heldout", i, W.WIDE) for i in range(60))]
    assert min(sides) < 0.15 and max(sides) > 0.3  # small and large objects


def test_drawn_pictures_are_what_the_user_drew():
    items = list(W.drawn_dataset(30))
    assert [it.item_id for it in items[:2]] == ["drawn/heldout/000000", "drawn/heldout/000001"]
    assert all(2 <= it.meta["n_objects"] <= 3 for it in items)
    assert {it.meta["shape"] for it in items} == {"circle", "square"}
    assert {it.meta["fill"] for it in items} == {"flat"}
    assert all(it.meta["kind"] == "attribute" for it in items)
    corner = np.array([np.asarray(it.image)[0, 0] for it in items])
    assert (corner == np.array(W.BACKGROUND)).all(1).mean() > 0.7  # grey background


@pytest.mark.parametrize("bad", [dict(flat=1.5), dict(scale=(0.0, 1.0)), dict(scale=(1.0, 0.5)),
                                 dict(image_sizes=(8, 64)), dict(image_sizes=(100, 64)),
                                 dict(shapes=()), dict(shapes=("circle", "hexagon"))])
def test_bad_options_raise(bad):
    with pytest.raises(DatasetError):
        W.WorldConfig(**bad)


def test_a_world_stored_in_a_model_config_comes_back():
    stored = {k: list(v) if isinstance(v, tuple) else v
              for k, v in W.WIDE.__dict__.items()}  # as JSON stores it
    model = lvlm.build_model(lvlm.ModelSpec(image_size=32, layers=1, heads=2, kv_heads=2,
                                            hidden=32, intermediate=64, vision_hidden=16),
                             lvlm.build_processor(lvlm.ModelSpec(image_size=32)))
    model.config.minilocal_world = stored
    assert lvlm.world_of(model) == W.WIDE
