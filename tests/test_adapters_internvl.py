"""InternVL adapter: tiles + thumbnail layout, pixel-shuffled grids, both grid sources."""

import numpy as np
import pytest
from tiny_families import assert_geometry_matches_model, square_image, tiny_internvl

from minilocal.adapters import InternVLAdapter, get_adapter
from minilocal.errors import ImageTokensNotFoundError

SHAPES = [((70, 40), (28, 8, 56, 30)), ((40, 100), (6, 50, 30, 86)), ((30, 30), (8, 8, 20, 20))]


@pytest.fixture(scope="module")
def local_pair():
    return tiny_internvl(local=True)


@pytest.mark.parametrize("size", [s for s, _ in SHAPES])
def test_layout_agrees_with_processor(local_pair, size):
    model, processor = local_pair
    adapter = get_adapter(model, processor)
    assert isinstance(adapter, InternVLAdapter)
    _, image, _ = square_image(size=size)
    rows, cols, thumb = adapter.tiling(size)
    n_views = processor.image_processor.get_number_of_image_patches(size[1], size[0])
    assert n_views == rows * cols + int(thumb)
    tiles = InternVLAdapter(model, processor, grid_source="tiles").prepare(image, "a cat")
    thumbnail = adapter.prepare(image, "a cat")
    assert tiles.grid == (4 * rows, 4 * cols)
    assert thumbnail.grid == (4, 4)
    ids = tiles.inputs["input_ids"][0]
    assert (ids == model.config.image_token_id).sum() == 16 * n_views
    assert tiles.positions.unique().numel() == tiles.positions.numel()
    if thumb:  # the thumbnail's 16 tokens are the last ones, before </img>
        assert ids[thumbnail.positions[-1] + 1] == processor.end_image_token_id
        assert set(thumbnail.positions.tolist()).isdisjoint(tiles.positions.tolist())
    else:
        assert (thumbnail.positions == tiles.positions).all()


@pytest.mark.parametrize("grid_source", ["thumbnail", "tiles"])
@pytest.mark.parametrize("size,box", SHAPES)
def test_geometry_matches_model(local_pair, grid_source, size, box):
    adapter = InternVLAdapter(*local_pair, grid_source=grid_source)
    prep = assert_geometry_matches_model(adapter, size=size, box=box)
    assert prep.geometry.kind == "resize"


def test_wrong_processor_is_refused():
    model, _ = tiny_internvl()
    _, other = tiny_internvl(max_patches=2)
    _, image, _ = square_image(size=(100, 30))
    adapter = InternVLAdapter(model, other)
    adapter.tiling = lambda size: (1, 4, True)  # a model expecting another tiling
    with pytest.raises(ImageTokensNotFoundError, match="tiles"):
        adapter.prepare(image, "a cat")


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_capture_matches_eager_reference(impl):
    model, processor = tiny_internvl(attn_implementation=impl)
    _, image, _ = square_image(size=(70, 40))
    for source in ("thumbnail", "tiles"):
        adapter = InternVLAdapter(model, processor, grid_source=source)
        cap, prep = adapter.attention(image, "the red square", method="capture")
        ref, _ = adapter.attention(image, "the red square", method="eager")
        assert cap.shape == (2, 4, *prep.grid)
        assert np.abs(cap - ref).max() < 1e-5


def test_processor_tiles_even_when_image_processor_says_no_crop():
    """The -hf checkpoints are reported to ship ``crop_to_patches: false`` in their image
    processor config; InternVLProcessor passes ``crop_to_patches=True`` itself and tiles
    anyway. The adapter must follow what the processor does (issue 17)."""
    model, processor = tiny_internvl()
    processor.image_processor.crop_to_patches = False
    _, image, _ = square_image(size=(70, 40))
    views = processor(images=image, text="<IMG_CONTEXT>", return_tensors="pt")["pixel_values"]
    assert views.shape[0] > 1  # the processor still tiles
    for source in ("thumbnail", "tiles"):
        adapter = InternVLAdapter(model, processor, grid_source=source)
        rows, cols, thumb = adapter.tiling((70, 40))
        assert rows * cols + int(thumb) == views.shape[0]
        prep = adapter.prepare(image, "a cat")
        assert prep.grid == ((4, 4) if source == "thumbnail" else (4 * rows, 4 * cols))
