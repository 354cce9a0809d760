"""Every supported checkpoint of book/models.md, through a replica of its real preprocessing.

Each ``tests/real_configs/<alias>.json`` holds the facts of one checkpoint (values, their
public sources, and an ``unconfirmed`` list for what no reachable source showed);
``tests/replicas.py`` builds from it the real model and processor classes with the real
settings at tiny widths. On each replica, at the real input resolutions (a 640 x 480 photo,
a 480 x 640 one, a square one, a very wide one):

* the grid the adapter reports equals the one the facts imply, computed here from the
  recorded sizes (not by the adapter's code), and its positions are image tokens;
* the prompt is the documented one (book/models.md, METHOD section 1) and its last token,
  the one the method reads, is the expression's final ".";
* the layout (layers, heads, key/value heads, sliding-window layers) is the real one, and
  each published head table loads against its model's layout;
* the geometry puts a painted cell where the processor put its pixels (one replica per
  distinct preprocessing; tests/tiny_families.assert_geometry_matches_model);
* capture equals the eager reference (float32, < 1e-5) on a two-layer replica with the
  real heads (the eager path keeps every layer's [heads, T, T] map, so the real depth at
  T ~ 3000 would need tens of GB; depth does not change the per-layer computation).

Models whose grid is not the default one (LLaVA-NeXT "highres", InternVL / SmolVLM
"tiles") are checked on the tiles grid too where the facts give it in closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from replicas import all_names, build_replica, load_facts
from tiny_families import assert_geometry_matches_model

from minilocal.adapters import InternVLAdapter, SmolVLMAdapter, get_adapter
from minilocal.models import MODEL_ALIASES, PUBLISHED_HEADS_FOLDER
from minilocal.selection import HeadTable

NAMES = all_names()
SIZES = [(640, 480), (480, 640), (500, 500), (1200, 300)]
EXPR = "the man on the left"
_CACHE: dict = {}


def _adapter(name: str, layers: int | None = 1, local: bool = False, **kwargs):
    key = (name, layers, local, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        model, processor = build_replica(name, layers=layers, local=local)
        _CACHE[key] = (model, processor)
    model, processor = _CACHE[key]
    return get_adapter(model, processor, **kwargs)


def _image(size, seed=0):
    W, H = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- expectations
def _smart_resize(h, w, factor, min_pixels, max_pixels):
    """Qwen2-VL's resize, as its model card describes it."""
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def _internvl_tiles(size, facts):
    """(rows, cols) of InternVL's dynamic tiling: the aspect ratio closest to the image's,
    ties to the larger tiling when the image has more than half its pixels."""
    W, H = size
    p = facts["processor"]
    lo, hi, side = p["min_patches"], p["max_patches"], p["size"]["height"]
    ratios = sorted({(i, j) for n in range(lo, hi + 1) for i in range(1, n + 1)
                     for j in range(1, n + 1) if lo <= i * j <= hi}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(W / H - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and W * H > 0.5 * side * side * cols * rows:
            best = (cols, rows)
    return best[1], best[0]


def _smolvlm_tiles(size, facts):
    """(rows, cols): long side resized to size.longest_edge, each side rounded up to whole
    max_image_size tiles."""
    W, H = size
    p = facts["processor"]
    longest, tile = p["size"]["longest_edge"], p["max_image_size"]["longest_edge"]
    scale = longest / max(W, H)
    w, h = int(W * scale), int(H * scale)
    if W >= H:
        w = longest
    else:
        h = longest
    return math.ceil(h / tile), math.ceil(w / tile)


def expected_grid(facts: dict, size) -> tuple[int, int]:
    """The default grid the recorded facts imply for an image of (W, H)."""
    fam, v, p = facts["family"], facts["vision"], facts["processor"]
    if fam == "llava":
        side = p["crop_size"]["height"] if p.get("do_center_crop") else v["image_size"]
        return side // v["patch_size"], side // v["patch_size"]
    if fam in ("llava_next", "llava_onevision", "deepseek_vl"):
        return v["image_size"] // v["patch_size"], v["image_size"] // v["patch_size"]
    if fam == "qwen2_5_vl":
        f = p["patch_size"] * p["merge_size"]
        hb, wb = _smart_resize(size[1], size[0], f, p["min_pixels"], p["max_pixels"])
        return hb // f, wb // f
    if fam == "internvl":
        g = math.isqrt(facts["image_seq_length"])
        return g, g
    if fam == "gemma3":
        g = math.isqrt(facts["mm_tokens_per_image"])
        return g, g
    if fam == "smolvlm":
        g = math.isqrt(p["image_seq_len"])
        assert g == v["image_size"] // v["patch_size"] // facts["scale_factor"]
        return g, g
    raise AssertionError(f"no expectation for family {fam!r}")


# --------------------------------------------------------------------------- the facts
def test_every_supported_checkpoint_has_a_data_file():
    """book/models.md's supported rows, the aliases and the data files are the same set,
    and each row links its data file."""
    models_md = Path(__file__).resolve().parents[1] / "book" / "models.md"
    text = models_md.read_text(encoding="utf-8")
    for name in NAMES:
        facts = load_facts(name)
        assert facts["format"] == "minilocal-real-config"
        assert MODEL_ALIASES[facts["alias"]] == facts["id"], name
        assert f"tests/real_configs/{name}.json" in text, f"{models_md}: no link to {name}"
        assert facts["sources"] and isinstance(facts["unconfirmed"], list)
    aliases = {k for k, v in MODEL_ALIASES.items() if k not in ("shapes", "sharegpt4v-7b")}
    assert aliases == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_layout_is_the_real_one(name):
    facts = load_facts(name)
    adapter = _adapter(name, layers=None)
    t = facts["text"]
    cfg = adapter.decoder().config
    assert adapter.num_layers == t["num_hidden_layers"]
    assert adapter.num_heads == t["num_attention_heads"]
    assert cfg.num_key_value_heads == t["num_key_value_heads"]
    assert type(adapter.model).__name__ == facts["model_class"]
    assert adapter.model.config.model_type == facts["model_type"]
    types = getattr(cfg, "layer_types", None) or []
    sliding = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    if facts["family"] == "gemma3":  # five sliding layers, then a global one
        assert cfg.sliding_window == t["sliding_window"]
        assert sliding == [i for i in range(t["num_hidden_layers"]) if (i + 1) % 6]
    else:
        assert sliding == [] or t.get("sliding_window") is not None


def test_published_head_tables_fit_their_models():
    """Every shipped table is labelled with its source and loads against the replica of
    its model; against another layout it is refused."""
    from minilocal.errors import HeadTableError

    tables = sorted(PUBLISHED_HEADS_FOLDER.glob("*.json"))
    assert tables
    by_id = {load_facts(n)["id"]: n for n in NAMES}
    for path in tables:
        raw = json.loads(path.read_text(encoding="utf-8"))
        assert raw["source"] == "as reported" and "AS REPORTED" in raw["notes"]
        table = HeadTable.from_json(path)
        adapter = _adapter(by_id[table.model_id], layers=None)
        table.check_model(adapter.num_layers, adapter.num_heads, table.model_id)
        other = next(n for n in NAMES if (load_facts(n)["text"]["num_hidden_layers"],
                                          load_facts(n)["text"]["num_attention_heads"])
                     != (table.num_layers, table.num_heads))
        wrong = _adapter(other, layers=None)
        with pytest.raises(HeadTableError):
            table.check_model(wrong.num_layers, wrong.num_heads)


# --------------------------------------------------------------------------- tokens, grid, prompt
@pytest.mark.parametrize("name", NAMES)
def test_tokens_grid_and_prompt(name):
    facts = load_facts(name)
    adapter = _adapter(name)
    tok = adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_id
    for size in SIZES:
        prep = adapter.prepare(_image(size), EXPR)
        ids = prep.inputs["input_ids"][0]
        assert prep.grid == expected_grid(facts, size), (name, size)
        assert prep.positions.numel() == prep.grid[0] * prep.grid[1]
        assert (ids[prep.positions] == image_id).all()
        assert prep.positions.unique().numel() == prep.positions.numel()
        assert prep.prompt == facts["prompt"]["expected"]
        assert int(ids[-1]) == tok.convert_tokens_to_ids(".")  # the query the method reads
        assert int(prep.positions.max()) < ids.numel() - 1
        if facts["family"] == "smolvlm":  # the split the processor wrote in the prompt
            starts = adapter.tiles_in_prompt(ids, int(facts["processor"]["image_seq_len"]))
            rows, cols = _smolvlm_tiles(size, facts)
            assert set(starts) == {(r, c) for r in range(rows) for c in range(cols)}
        if facts["family"] == "internvl":  # the views the processor cut
            rows, cols = _internvl_tiles(size, facts)
            views = rows * cols + int(rows * cols > 1)
            assert prep.inputs["pixel_values"].shape[0] == views, (name, size)
        if facts.get("image_tokens_per_image"):
            assert int((ids == image_id).sum()) == facts["image_tokens_per_image"]


@pytest.mark.parametrize("name", [n for n in NAMES if load_facts(n)["family"]
                                  in ("internvl", "smolvlm")])
def test_tiles_grid(name):
    facts = load_facts(name)
    cls, tiles = {"internvl": (InternVLAdapter, _internvl_tiles),
                  "smolvlm": (SmolVLMAdapter, _smolvlm_tiles)}[facts["family"]]
    adapter = _adapter(name, grid_source="tiles")
    assert isinstance(adapter, cls)
    g = expected_grid(facts, (1, 1))[0]
    for size in [(640, 480), (1200, 300)]:  # a 4:3 and a 4:1 split (the others: tiny tests)
        rows, cols = tiles(size, facts)
        prep = adapter.prepare(_image(size), EXPR)
        assert prep.grid == (rows * g, cols * g) if rows * cols > 1 else (g, g), (name, size)


# --------------------------------------------------------------------------- geometry, capture
def _distinct(key):
    seen, out = set(), []
    for name in NAMES:
        facts = load_facts(name)
        k = key(facts)
        if k not in seen:
            seen.add(k)
            out.append(name)
    return out


GEOMETRY = _distinct(lambda f: json.dumps([f["family"], f["vision"], f["processor"]],
                                          sort_keys=True))


@pytest.mark.parametrize("name", GEOMETRY)
def test_geometry_puts_a_painted_cell_where_the_processor_put_it(name):
    adapter = _adapter(name, local=True)
    W, H = 640, 480
    assert_geometry_matches_model(adapter, size=(W, H), box=(200, 150, 360, 300))


#: anyres families: every image gives T >= ~2300 tokens, and the eager reference at that
#: length takes ~10-30 s per replica on one core (tests/conftest.py NOT_IN_DEFAULT_RUN)
ANYRES = {"llava_next", "llava_onevision"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if load_facts(n)["family"] in ANYRES else n
    for n in NAMES
])
def test_capture_equals_eager(name):
    model, processor = build_replica(name, layers=2, attn_implementation="sdpa")
    adapter = get_adapter(model, processor)
    # the real size with the shortest prompt (the eager reference costs heads * T^2)
    lengths = {size: adapter.prepare(_image(size), EXPR).inputs["input_ids"].shape[-1]
               for size in SIZES}
    image = _image(min(lengths, key=lengths.get))
    cap, prep = adapter.attention(image, EXPR, method="capture")
    ref, _ = adapter.attention(image, EXPR, method="eager")
    assert cap.shape == (2, adapter.num_heads, *prep.grid)
    assert np.abs(cap - ref).max() < 1e-5
    s_img = cap.sum((-1, -2))
    assert (s_img > 0).all() and (s_img <= 1 + 1e-5).all()
