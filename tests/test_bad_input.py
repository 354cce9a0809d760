"""Every bad input that issue 3 lists gets a clear error naming the fix, or a stated rule."""

import numpy as np
import pytest
from PIL import Image

from minilocal.adapters import get_adapter
from minilocal.criteria import spatial_entropy
from minilocal.errors import (
    ExpressionError,
    HeadTableError,
    ImageError,
    ImageTokensNotFoundError,
    ModelNotSupportedError,
)
from minilocal.geometry import Geometry
from minilocal.grounding import ground
from minilocal.images import ImageConversionWarning, load_image
from minilocal.pipeline import Grounder
from minilocal.selection import HeadTable


def _rgb(w=40, h=30):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8)


@pytest.mark.parametrize(
    "make,rule",
    [
        (lambda: Image.fromarray(_rgb()[..., 0], "L"), "converted to RGB"),
        (lambda: Image.fromarray(_rgb()).convert("P"), "converted to RGB"),
        (lambda: Image.fromarray(np.dstack([_rgb(), np.full((30, 40), 128, np.uint8)]), "RGBA"),
         "composited on white"),
        (lambda: Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)),
         "rescaled to 8-bit"),
    ],
)
def test_non_rgb_images_are_converted_with_a_warning_or_refused_when_strict(make, rule):
    with pytest.warns(ImageConversionWarning, match=rule):
        out = load_image(make())
    assert out.mode == "RGB" and out.size == (40, 30)
    with pytest.raises(ImageError, match="Fix: convert it yourself"):
        load_image(make(), strict=True)


def test_sixteen_bit_keeps_its_contrast():
    arr = (np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)  # 0 .. 59950
    with pytest.warns(ImageConversionWarning):
        out = np.asarray(load_image(Image.fromarray(arr)))
    assert out.min() == 0 and out.max() == 255  # not clipped to white


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(40, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    with pytest.warns(ImageConversionWarning, match="EXIF orientation 6"):
        out = load_image(path)
    assert out.size == (30, 40)


@pytest.mark.parametrize("size", [(1, 1), (4, 100)])
def test_tiny_images_are_refused(size):
    with pytest.raises(ImageError, match="at least 8 pixels"):
        load_image(Image.new("RGB", size))


def test_very_large_images_are_refused():
    with pytest.raises(ImageError, match="downscale"):
        load_image(Image.new("RGB", (300, 300)), max_pixels=10_000)


def test_not_an_image(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(bad)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="PIL.Image.fromarray"):
        load_image(_rgb())


@pytest.mark.parametrize("expr", ["", "   ", "\n\t", "...", 3])
def test_empty_expression(tiny_llava_pair, expr):
    model, processor = tiny_llava_pair
    with pytest.raises(ExpressionError, match="Fix:"):
        get_adapter(model, processor).prepare(Image.fromarray(_rgb()), expr)


def test_expression_longer_than_the_context(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    with pytest.raises(ExpressionError, match="beyond this model's context of 512"):
        adapter.prepare(Image.fromarray(_rgb()), "the red circle " * 200)


def test_image_tokens_not_found(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    prepared = adapter.prepare(Image.fromarray(_rgb()), "the dog")
    ids = prepared.inputs["input_ids"]
    with pytest.raises(ImageTokensNotFoundError, match="processor"):
        adapter.locate_image_tokens(ids, image_token_id=12345, grid=prepared.grid)
    with pytest.raises(ImageTokensNotFoundError, match="grid is"):
        adapter.locate_image_tokens(ids, model.config.image_token_id, grid=(5, 5))


def test_model_family_without_adapter():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64))
    with pytest.raises(ModelNotSupportedError, match="Adapter subclass"):
        get_adapter(model, None)


def test_head_table_of_another_model(tiny_llava_pair, tmp_path):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    table = HeadTable(model_id="llava-hf/llava-1.5-7b-hf", num_layers=32, num_heads=32,
                      heads=[(14, 24), (14, 13)])
    with pytest.raises(HeadTableError, match="Fix:"):
        Grounder(model, processor, adapter, table)
    broken = tmp_path / "heads.json"
    broken.write_text("{not json")
    with pytest.raises(HeadTableError, match="Fix:"):
        HeadTable.from_json(broken)
    same_shape = HeadTable(model_id="someone/else", num_layers=3, num_heads=4, heads=[(1, 1)])
    with pytest.warns(UserWarning):
        Grounder(model, processor, adapter, same_shape)


@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_nan_or_all_zero_maps_stay_defined(fill):
    attn = np.full((2, 3, 6, 6), fill, np.float32)
    assert np.isinf(spatial_entropy(attn)).all()
    out = ground(attn, [(0, 0), (1, 2)], Geometry.resize((60, 60), (6, 6)))
    assert out.box is None
    assert ("not finite" if np.isnan(fill) else "no foreground") in out.reason


# ------------------------------------------------------------------ issue 15
import tiny_families as _tf  # noqa: E402

from minilocal.adapters.base import special_token_strings  # noqa: E402
from minilocal.criteria import elbow_threshold, find_elbow  # noqa: E402
from minilocal.errors import UnknownWordsWarning  # noqa: E402

_FAMILY_BUILDERS = {
    "llava": None,  # the session's tiny LLaVA (conftest)
    "qwen2_5_vl": _tf.tiny_qwen2_5_vl,
    "llava_next": _tf.tiny_llava_next,
    "llava_onevision": _tf.tiny_llava_onevision,
    "internvl": _tf.tiny_internvl,
    "gemma3": _tf.tiny_gemma3,
    "smolvlm": _tf.tiny_smolvlm,
    "deepseek_vl": _tf.tiny_deepseek_vl,
}


@pytest.mark.parametrize("family", sorted(_FAMILY_BUILDERS))
def test_special_tokens_in_the_expression_are_refused_in_every_family(family, tiny_llava_pair):
    """'the <image> red circle' used to reach the processor (a raw transformers ValueError
    on the image-token count); '</s> ...' silently became a real end-of-text token."""
    build = _FAMILY_BUILDERS[family]
    model, processor = tiny_llava_pair if build is None else build()
    adapter = get_adapter(model, processor)
    image = Image.fromarray(_rgb(64, 48))
    specials = special_token_strings(processor)
    image_token = getattr(processor, "image_token", None) or processor.tokenizer.image_token
    assert image_token in specials and processor.tokenizer.eos_token in specials
    for token in specials:
        with pytest.raises(ExpressionError, match="special token") as err:
            adapter.prepare(image, f"the {token} red square")
        assert repr(token) in str(err.value) and "Fix:" in str(err.value)
    # glued to a word, the tokenizer still reads it as the special token: refused too
    with pytest.raises(ExpressionError, match="special token"):
        adapter.prepare(image, f"red{image_token}square")
    prepared = adapter.prepare(image, "the red square")  # plain text is untouched
    assert prepared.expr == "the red square."


def test_the_embedded_models_unknown_words_are_named(capsys):
    """'빨간 원' gave exit 0 and a box over most of the image, with no word said."""
    from minilocal.cli import main

    grounder = Grounder.from_pretrained("shapes")
    with pytest.warns(UnknownWordsWarning, match="'빨간', '원'") as caught:
        result = grounder.ground("examples/shapes.png", "빨간 원")
    assert result.unknown_words == ("빨간", "원")
    assert result.to_dict()["unknown_words"] == ["빨간", "원"]
    message = str(caught[0].message)
    for word in ("red", "circle", "square", "left", "big"):  # the words it does know
        assert f" {word} " in message
    known = grounder.ground("examples/shapes.png", "the red circle")
    assert known.unknown_words == () and known.to_dict()["unknown_words"] == []
    # the CLI: one line on stderr, the field in the JSON on stdout
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rc = main(["ground", "examples/shapes.png", "the red blob", "-o",
                   os.path.join(d, "o.png")])
    out = capsys.readouterr()
    assert rc == 0
    assert json.loads(out.out.strip().splitlines()[-1])["unknown_words"] == ["blob"]
    assert "does not know the word(s) 'blob'" in out.err and "Traceback" not in out.err


def test_a_real_tokenizer_has_no_unknown_words(tiny_llava_pair):
    """Only closed vocabularies have unknown words: a tokenizer without an unk token (as
    byte-level BPE ones) reports none."""
    from minilocal.adapters.base import unknown_words

    class ByteLevel:
        unk_token_id = None

        def __call__(self, text, **kw):
            return {"input_ids": list(text.encode())}

    assert unknown_words("빨간 원", ByteLevel()) == ()
    _, processor = tiny_llava_pair
    assert unknown_words("the zzzqqq dog", processor) == ("zzzqqq",)


def test_a_directory_is_not_called_missing(tmp_path):
    with pytest.raises(ImageError, match="is a directory") as err:
        load_image(tmp_path)
    assert "not found" not in str(err.value)


def test_a_box_that_lies_only_in_the_padding_is_no_box():
    """All foreground in the pad band of a pad-to-square image: the clipped box had zero
    height and reason None, and SAM then raised, stopping the evaluation."""
    attn = np.zeros((1, 1, 24, 24))
    attn[0, 0, -1, 5:9] = 1
    g = ground(attn, [(0, 0)], Geometry.pad_to_square((640, 427), (24, 24)))
    assert g.box is None and "padding" in g.reason
    # foreground reaching into the picture still gives the clipped box
    attn[0, 0, 12:, 5:9] = 1
    g = ground(attn, [(0, 0)], Geometry.pad_to_square((640, 427), (24, 24)))
    assert g.box is not None and g.reason is None
    assert g.box[3] == 427 and g.box[3] > g.box[1]


def test_padding_only_item_is_a_miss_not_a_crash(tiny_llava_pair, tmp_path):
    """Through the Grounder with a SAM: such an item gets box None (SAM is not called)."""
    from minilocal.segmentation import SamRefiner

    class NeverCalled(SamRefiner):
        img_size = prompt_size = 64

        def _encode(self, image):
            raise AssertionError("SAM must not run without a box")

        def _decode(self, box, prompt, multimask):
            raise AssertionError("SAM must not run without a box")

    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    grounder = Grounder(model, processor, adapter, [(0, 0)], sam=NeverCalled())
    image = Image.fromarray(_rgb(640, 427))

    def pad_only(img, expr):
        _, prep = adapter.attention(img, expr)
        attn = np.zeros((adapter.num_layers, adapter.num_heads, 24, 24), np.float32)
        attn[..., -1, 5:9] = 1.0  # the last row of LLaVA-1.5's grid: padding of a 640 x 427
        geo = Geometry.pad_to_square(img.size, (24, 24))
        return attn, type(prep)(**{**prep.__dict__, "grid": (24, 24), "geometry": geo})

    grounder.attention = pad_only
    result = grounder.ground(image, "the dog")
    assert result.box is None and "padding" in result.reason and result.mask_source == "pseudo"


@pytest.mark.parametrize("values,index", [
    ([0, 0, 1, 1], 1),            # two points tie: the first one (threshold 0, all pass)
    ([1, 1, 0, 0], 1),
    ([0, 0, 0, 1, 1, 1], 2),      # (2, 0) and (3, 1) tie
    ([0.1, 0.1, 0.7, 0.7], 1),    # the same shape at other values (rounding differs)
    ([0, 0.05, 0.1, 0.9, 0.95, 1.0], 2),
])
def test_find_elbow_gives_exact_ties_to_the_first_point(values, index):
    assert find_elbow(values) == index
    assert elbow_threshold(values) == np.sort(values)[index]
