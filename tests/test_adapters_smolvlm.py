"""SmolVLM (Idefics3) adapter: split tiles + global image, pixel-shuffled grids."""

import numpy as np
import pytest
from tiny_families import assert_geometry_matches_model, square_image, tiny_smolvlm

from minilocal.adapters import SmolVLMAdapter, get_adapter

SHAPES = [((70, 40), (28, 8, 56, 30)), ((40, 90), (6, 50, 30, 80)), ((24, 24), (6, 6, 16, 16))]


@pytest.fixture(scope="module")
def local_pair():
    return tiny_smolvlm(local=True)


@pytest.mark.parametrize("size", [s for s, _ in SHAPES])
def test_layout_agrees_with_processor(local_pair, size):
    model, processor = local_pair
    adapter = get_adapter(model, processor)
    assert isinstance(adapter, SmolVLMAdapter)
    _, image, _ = square_image(size=size)
    out = processor.image_processor(images=[image], return_row_col_info=True)
    rows, cols = adapter.tiling(size)
    assert (rows, cols) == (out["rows"][0][0], out["cols"][0][0])
    tiles = SmolVLMAdapter(model, processor, grid_source="tiles").prepare(image, "a cat")
    glob = adapter.prepare(image, "a cat")
    assert glob.grid == (4, 4)
    assert tiles.grid == ((4 * rows, 4 * cols) if rows else (4, 4))
    ids = glob.inputs["input_ids"][0]
    assert (ids == model.config.image_token_id).sum() == 16 * (rows * cols + 1)
    tok = processor.tokenizer
    # the global image's tokens follow <global-img>
    assert ids[glob.positions[0] - 1] == tok.convert_tokens_to_ids("<global-img>")
    if rows:
        assert set(glob.positions.tolist()).isdisjoint(tiles.positions.tolist())


@pytest.mark.parametrize("grid_source", ["global", "tiles"])
@pytest.mark.parametrize("size,box", SHAPES)
def test_geometry_matches_model(local_pair, grid_source, size, box):
    adapter = SmolVLMAdapter(*local_pair, grid_source=grid_source)
    prep = assert_geometry_matches_model(adapter, size=size, box=box)
    assert prep.geometry.kind == "resize"


def test_smolvlm2_model_class(local_pair):
    model, processor = tiny_smolvlm(model_type="smolvlm", local=True)
    assert type(model).__name__ == "SmolVLMForConditionalGeneration"
    adapter = get_adapter(model, processor)
    assert isinstance(adapter, SmolVLMAdapter)
    assert_geometry_matches_model(adapter, size=(70, 40), box=(28, 8, 56, 30))


@pytest.mark.parametrize("model_type", ["idefics3", "smolvlm"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_capture_matches_eager_reference(impl, model_type):
    model, processor = tiny_smolvlm(attn_implementation=impl, model_type=model_type)
    _, image, _ = square_image(size=(70, 40))
    for source in ("global", "tiles"):
        adapter = SmolVLMAdapter(model, processor, grid_source=source)
        cap, prep = adapter.attention(image, "the red square", method="capture")
        ref, _ = adapter.attention(image, "the red square", method="eager")
        assert cap.shape == (2, 4, *prep.grid)
        assert np.abs(cap - ref).max() < 1e-5


def test_tiles_follow_the_processors_markers_not_a_recomputed_split(local_pair):
    """The split is the processor's: each cell of the tiles grid sits in the tile whose
    ``<row_r_col_c>`` marker precedes it, even when the image processor's prediction of
    the split disagrees (here: swapped rows and columns, the same total count; issue 17)."""
    model, processor = local_pair
    adapter = SmolVLMAdapter(model, processor, grid_source="tiles")
    _, image, _ = square_image(size=(120, 20))
    real = adapter.tiling((120, 20))
    assert real[0] != real[1]  # a non-square split, so a swap would show
    adapter.tiling = lambda size: (real[1], real[0])  # a diverging recomputation
    prep = adapter.prepare(image, "a cat")
    assert prep.grid == (4 * real[0], 4 * real[1])
    tokens = processor.tokenizer.convert_ids_to_tokens(prep.inputs["input_ids"][0].tolist())
    h, w = prep.grid
    for i, p in enumerate(prep.positions.tolist()):
        r, c = divmod(i, w)
        m = max(q for q in range(p) if tokens[q].startswith("<row_"))  # nearest marker
        assert tokens[m] == f"<row_{r // 4 + 1}_col_{c // 4 + 1}>", (i, p, tokens[m])
        assert p == m + 1 + (r % 4) * 4 + c % 4  # row-major inside the tile
