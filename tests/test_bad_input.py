"""Every bad input that issues 3 and 19 list gets a clear error naming the fix, or a stated rule."""

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minilocal.adapters import get_adapter
from minilocal.cli import main
from minilocal.criteria import spatial_entropy
from minilocal.data import GroundingDataset, GroundingItem
from minilocal.errors import (
    CacheError,
    ExpressionError,
    HeadTableError,
    ImageError,
    ImageTokensNotFoundError,
    InputError,
    ModelNotSupportedError,
    SamError,
)
from minilocal.evaluation import evaluate, read_predictions
from minilocal.expressions import check_expression
from minilocal.geometry import Geometry
from minilocal.grounding import ground
from minilocal.images import ImageConversionWarning, load_image
from minilocal.models import SHAPES_FOLDER, load_model
from minilocal.pipeline import Grounder
from minilocal.provenance import model_fingerprint, state_dict_digest
from minilocal.selection import HeadTable, find_heads


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


# ----------------------------------------------------------------------------------------
# Issue 19: nothing stale, nothing overwritten, no traceback
# ----------------------------------------------------------------------------------------

def _swap_heads(folder: Path, layer: int = 3, a: int = 0, b: int = 1, head_dim: int = 16):
    """Rewrite a shapes-model folder with heads a and b of one layer exchanged."""
    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "model.safetensors")
    p = f"language_model.model.layers.{layer}.self_attn."
    sa, sb = slice(a * head_dim, (a + 1) * head_dim), slice(b * head_dim, (b + 1) * head_dim)
    for name in ("q_proj", "k_proj", "v_proj"):
        w = sd[p + name + ".weight"]
        new = w.clone()
        new[sa], new[sb] = w[sb], w[sa]
        sd[p + name + ".weight"] = new
    w = sd[p + "o_proj.weight"]
    new = w.clone()
    new[:, sa], new[:, sb] = w[:, sb], w[:, sa]
    sd[p + "o_proj.weight"] = new
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


def test_swapped_heads_are_found_swapped_with_the_default_cache(tmp_path, monkeypatch, capsys):
    """Issue 19 item 1: a copy of the shipped model with L3H0 and L3H1 exchanged carries the
    same model id; with the default cache folder its table must still be its own."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(SHAPES_FOLDER, "swapped")
    _swap_heads(Path("swapped"))
    common = ["--dataset", "shapes", "--split", "selection", "--n", "40", "--repeats", "1",
              "--device", "cpu", "--quiet"]
    assert main(["find-heads", "--model", "shapes", *common, "-o", "a.json"]) == 0
    assert main(["find-heads", "--model", "swapped", *common, "-o", "b.json"]) == 0
    assert len(list(Path(".minilocal-cache").iterdir())) == 2  # one folder per model
    fa = HeadTable.from_json("a.json").frequencies
    fb = HeadTable.from_json("b.json").frequencies
    assert abs(fa[3, 0] - fa[3, 1]) > 20  # the two heads differ, so the swap shows
    # the swapped model's head 1 is the shipped model's head 0 (and vice versa); one
    # selection may flip on float noise from the changed summation order
    np.testing.assert_allclose(fb[3, [1, 0]], fa[3, [0, 1]], atol=100 / 40 + 1e-9)


def _eval_items(n=3, bad=()):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        arr = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        mask = np.zeros((30, 40), bool)
        mask[5:15, 10:30] = True

        def load(arr=arr, i=i):
            if i in bad:
                raise OSError(f"broken file {i}")
            return Image.fromarray(arr)

        items.append(GroundingItem(
            item_id=f"t/{i}", expr="the red circle", box=np.array([10.0, 5.0, 30.0, 15.0]),
            image_id=f"img{i}", dataset="t", split="val", load_image=load,
            load_mask=mask.copy))
    return GroundingDataset(items, name="t")


@pytest.fixture()
def grounder(tiny_llava_pair):
    model, processor = tiny_llava_pair
    return Grounder(model, processor, get_adapter(model, processor), ["L2H1", (1, 3)])


def test_fingerprint_sees_swapped_weights_and_dtype(tiny_llava_pair):
    model, _ = tiny_llava_pair
    other = copy.deepcopy(model)
    assert state_dict_digest(other) == state_dict_digest(model)
    with torch.no_grad():
        w = next(p for n, p in other.named_parameters() if "q_proj" in n)
        w[[0, 1]] = w[[1, 0]].clone()
    assert state_dict_digest(other) != state_dict_digest(model)
    half = copy.deepcopy(model).to(torch.bfloat16)
    fp = model_fingerprint(half)
    assert fp["dtype"] == "bfloat16" and fp != model_fingerprint(model)


def test_eval_resume_refuses_other_weights_dtype_or_sam(tiny_llava_pair, tmp_path):
    model, processor = tiny_llava_pair
    data = _eval_items(2)
    out = tmp_path / "p.jsonl"
    base = Grounder(model, processor, get_adapter(model, processor), ["L2H1"])
    evaluate(base, data, out, progress=False)
    half = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(CacheError, match="model"):
        evaluate(Grounder(half, processor, get_adapter(half, processor), ["L2H1"]), data, out,
                 progress=False)
    from minilocal.segmentation import load_sam

    sam_a = load_sam("segment-anything", "shapes", device="cpu")
    sam_b = load_sam("segment-anything", "shapes", device="cpu")
    with torch.no_grad():
        next(sam_b.model.parameters()).add_(0.5)
    adapter = get_adapter(model, processor)
    out2 = tmp_path / "sam.jsonl"
    evaluate(Grounder(model, processor, adapter, ["L2H1"], sam_a), data, out2, progress=False)
    with pytest.raises(CacheError, match="sam"):
        evaluate(Grounder(model, processor, adapter, ["L2H1"], sam_b), data, out2,
                 progress=False)


def test_find_heads_cache_keeps_fingerprints_apart(tmp_path):
    data = _eval_items(4)
    calls = []

    def attn_fn(scale):
        def fn(it):
            calls.append(it.item_id)
            rng = np.random.default_rng(int(it.item_id[-1]))
            return (rng.random((2, 3, 4, 4)) * scale).astype(np.float32)
        return fn

    kw = dict(n=4, repeats=1, k=1, cache_dir=tmp_path, model_id="same/id", progress=False)
    find_heads(attn_fn(1.0), data, fingerprint={"weights_sha256": "a"}, **kw)
    find_heads(attn_fn(1.0), data, fingerprint={"weights_sha256": "a"}, **kw)
    assert len(calls) == 4  # the second run came from the cache
    find_heads(attn_fn(2.0), data, fingerprint={"weights_sha256": "b"}, **kw)
    assert len(calls) == 8  # other weights: computed again, in their own folder
    assert len(list(tmp_path.iterdir())) == 2


def test_corrupt_or_empty_meta_is_rebuilt_and_deleted_meta_cannot_mix(grounder, tmp_path):
    data = _eval_items(3)
    full = tmp_path / "full.jsonl"
    evaluate(grounder, data, full, progress=False)
    for content in ("", "{not json"):
        out = tmp_path / f"p{len(content)}.jsonl"
        evaluate(grounder, data[:2], out, progress=False)
        (tmp_path / f"{out.name}.meta.json").write_text(content)
        with pytest.warns(UserWarning, match="empty or corrupt"):
            evaluate(grounder, data, out, progress=False)
        assert out.read_text() == full.read_text()
    out = tmp_path / "deleted.jsonl"
    evaluate(grounder, data[:2], out, progress=False)
    (tmp_path / "deleted.jsonl.meta.json").unlink()
    grounder.heads = [(0, 0)]
    with pytest.raises(CacheError, match="other or unknown settings"):
        evaluate(grounder, data, out, progress=False)


@pytest.mark.parametrize("line", ['{"foo": 1}', "null", "[1, 2]", '{"item_id": "t/1", "box_io'])
def test_malformed_middle_lines_are_dropped_and_recomputed_in_place(grounder, tmp_path, line):
    data = _eval_items(3)
    full = tmp_path / "full.jsonl"
    evaluate(grounder, data, full, progress=False)
    out = tmp_path / "p.jsonl"
    lines = full.read_text().splitlines()
    out.write_text(lines[0] + "\n" + line + "\n" + lines[2] + "\n")
    shutil.copy(tmp_path / "full.jsonl.meta.json", tmp_path / "p.jsonl.meta.json")
    with pytest.raises(CacheError, match="line 2 is not a prediction record"):
        read_predictions(out)
    with pytest.warns(UserWarning, match="malformed"):
        evaluate(grounder, data, out, progress=False)
    assert out.read_text() == full.read_text()  # item t/1 recomputed, in its place


def test_two_evaluations_cannot_write_one_file(grounder, tmp_path):
    import fcntl

    out = tmp_path / "p.jsonl"
    with open(tmp_path / "p.jsonl.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(CacheError, match="another evaluation"):
            evaluate(grounder, _eval_items(1), out, progress=False)
    evaluate(grounder, _eval_items(1), out, progress=False)  # free again
    assert len(out.read_text().splitlines()) == 1


def test_a_failing_item_is_recorded_and_the_run_goes_on(grounder, tmp_path):
    data = _eval_items(3, bad={1})
    out = tmp_path / "p.jsonl"
    with pytest.warns(UserWarning, match="t/1"):
        scores = evaluate(grounder, data, out, progress=False)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["item_id"] for r in recs] == ["t/0", "t/1", "t/2"]
    assert recs[1]["failed"] is True and "broken file 1" in recs[1]["reason"]
    assert recs[1]["box_iou"] == 0.0 and scores.n == 3
    # a resume tries the failed item again (here it has been repaired)
    again = evaluate(grounder, _eval_items(3), out, progress=False)
    assert not any("failed" in json.loads(x) for x in out.read_text().splitlines())
    assert again.n == 3
    with pytest.raises(InputError, match="every one of the 2 items failed"):
        evaluate(grounder, _eval_items(2, bad={0, 1}), tmp_path / "all.jsonl", progress=False)


def test_an_image_too_thin_for_sam_is_a_sam_error_and_a_failed_item(tmp_path):
    g = Grounder.from_pretrained("shapes", sam="shapes", device="cpu")
    thin = Image.new("RGB", (5000, 8), "white")
    thin.paste((255, 0, 0), (0, 0, 5000, 8))
    with pytest.raises(SamError, match="5000x8") as exc:  # the shipped model: deterministic
        g.ground(thin, "the red circle")
    assert "too thin" in exc.value.fix
    item = GroundingItem(item_id="thin", expr="the red circle",
                         box=np.array([0.0, 0.0, 5000.0, 8.0]), image_id="thin", dataset="t",
                         split="val", load_image=lambda: thin)
    ok = _eval_items(1).items[0]
    data = GroundingDataset([item, ok], name="t")
    out = tmp_path / "p.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(g, data, out, progress=False)  # never raises for one item
    assert len(read_predictions(out)) == 2


def test_find_heads_skips_an_item_that_raises():
    data = _eval_items(5)

    def attn(it):
        if it.item_id == "t/2":
            raise ExpressionError("bad expression", "fix it")
        rng = np.random.default_rng(int(it.item_id[-1]))
        return rng.random((2, 3, 4, 4)).astype(np.float32)

    with pytest.warns(UserWarning, match="t/2"):
        table = find_heads(attn, data, n=5, repeats=2, k=1, progress=False)
    assert table.settings["skipped"] == {"t/2": "ExpressionError: bad expression"}
    assert all("t/2" not in ids and len(ids) == 4 for ids in table.sample_ids)

    def always(it):
        raise OSError("disk gone")

    with pytest.raises(InputError, match="every one of the 5 items failed.*disk gone"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            find_heads(always, data, n=5, repeats=1, progress=False)


# -- the CLI ---------------------------------------------------------------------------


@pytest.fixture()
def picture(tmp_path):
    path = tmp_path / "v.png"
    Image.fromarray(_rgb(50, 30)).save(path)
    return path


@pytest.mark.parametrize("extra", [
    ["--dtype", "int8"], ["--sigma", "nan"], ["--sigma", "-1"], ["--threshold", "2"],
    ["--device", "gpu"], ["--max-pixels", "0"],
])
def test_bad_grounding_arguments_are_refused_by_the_parser(picture, extra, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ground", str(picture), "the dog", *extra])
    assert exc.value.code == 2 and extra[0] in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--limit", "-1"], ["--limit", "0"], ["--seed", "-1"], ["--n", "0"],
])
def test_bad_run_arguments_are_refused_by_the_parser(extra, capsys):
    command = "find-heads" if extra[0] in ("--seed", "--n") else "eval"
    with pytest.raises(SystemExit) as exc:
        main([command, "--dataset", "shapes", *extra])
    assert exc.value.code == 2 and extra[0] in capsys.readouterr().err


def test_find_heads_api_refuses_a_negative_seed():
    with pytest.raises(InputError, match="seed"):
        find_heads(lambda it: None, _eval_items(2), n=2, seed=-1, progress=False)


def test_cuda_without_a_gpu_is_named(picture, capsys):
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    assert main(["ground", str(picture), "the dog", "--device", device]) == 2
    err = capsys.readouterr().err
    assert ("no CUDA GPU" in err or "GPU(s)" in err) and "Fix:" in err


def _model_folder_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    badcfg = tmp_path / "badcfg"
    badcfg.mkdir()
    (badcfg / "config.json").write_text("{bad")
    pickled = tmp_path / "pickled"
    shutil.copytree(SHAPES_FOLDER, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not a real pickle")
    return {"empty": empty, "badcfg": badcfg, "pickled": pickled,
            "missing": tmp_path / "nowhere"}


@pytest.mark.parametrize("case", ["empty", "badcfg", "pickled", "missing"])
def test_unusable_model_folders_name_the_fix(tmp_path, case, picture, capsys):
    folder = _model_folder_cases(tmp_path)[case]
    assert main(["ground", str(picture), "the dog", "--model", str(folder),
                 "--heads", "L0H0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Fix:" in err and "Traceback" not in err
    if case == "pickled":
        assert "safetensors" in err


def test_an_offline_hub_id_names_the_fix(monkeypatch):
    import huggingface_hub.constants as hub

    from minilocal.errors import ModelLoadError

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="could not load 'someone/not-downloaded'") as err:
        load_model("someone/not-downloaded", device="cpu")
    assert "internet" in err.value.fix


def test_unreadable_sam_checkpoint_names_the_fix(tmp_path, picture, capsys):
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"garbage")
    assert main(["ground", str(picture), "the circle", "--sam", str(bad),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "sam.pth" in err and "Fix:" in err and "Traceback" not in err
    assert main(["ground", str(picture), "the circle", "--sam", str(tmp_path / "no.pth"),
                 "--device", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ground_never_overwrites_the_input_or_an_existing_file(picture, tmp_path,
                                                                monkeypatch, capsys):
    before = picture.read_bytes()
    args = ["--device", "cpu"]
    assert main(["ground", str(picture), "the red circle", "-o", str(picture), *args]) == 2
    assert "input image" in capsys.readouterr().err and picture.read_bytes() == before
    monkeypatch.chdir(tmp_path)
    assert main(["ground", str(picture), "the red circle", *args]) == 0
    assert main(["ground", str(picture), "the red circle", *args]) == 0
    outs = [json.loads(x)["overlay"] for x in capsys.readouterr().out.splitlines()]
    assert outs == ["v_grounding.png", "v_grounding-2.png"]
    first = Path("v_grounding.png").read_bytes()
    assert main(["ground", str(picture), "a square", "-o", "v_grounding.png", *args]) == 2
    assert "--force" in capsys.readouterr().err
    assert Path("v_grounding.png").read_bytes() == first
    assert main(["ground", str(picture), "a square", "-o", "v_grounding.png", "--force",
                 *args]) == 0
    assert not list(tmp_path.glob(".v_grounding*"))  # no temporary file left


def test_ground_prints_the_box_when_the_picture_cannot_be_written(picture, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["ground", str(picture), "the red circle", "-o", str(blocker / "o.png"),
                 "--device", "cpu"]) == 2
    cap = capsys.readouterr()
    rec = json.loads(cap.out.strip())
    assert rec["overlay"] is None and len(rec["box"] or [0] * 4) == 4
    assert "could not be written" in cap.err
    assert main(["ground", str(picture), "the red circle", "-o", str(tmp_path / "o.xyz"),
                 "--device", "cpu"]) == 2
    assert "extension" in capsys.readouterr().err
    assert main(["ground", str(picture), "the red circle", "-o", str(tmp_path / "new" / "o.png"),
                 "--device", "cpu"]) == 0  # a missing folder is made
    assert (tmp_path / "new" / "o.png").is_file()


def test_output_folders_are_refused(model_dir, refer_root, tmp_path, capsys):
    common = ["--model", str(model_dir), "--device", "cpu", "--dataset", "refcoco",
              "--root", str(refer_root), "--quiet"]
    assert main(["find-heads", *common, "-o", str(tmp_path)]) == 2
    assert main(["eval", *common, "--heads", "L0H0", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("is a folder") == 2
    (tmp_path / "heads.json").write_text("{}")
    assert main(["find-heads", *common, "-o", str(tmp_path / "heads.json")]) == 2
    assert "--force" in capsys.readouterr().err


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(model_dir, refer_root, tmp_path,
                                                         monkeypatch, capsys):
    from minilocal.pipeline import Grounder as G

    real, calls = G.ground, []

    def interrupt_second(self, image, expr):
        calls.append(expr)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, image, expr)

    monkeypatch.setattr(G, "ground", interrupt_second)
    preds = tmp_path / "p.jsonl"
    argv = ["eval", "--model", str(model_dir), "--heads", "L2H1", "--device", "cpu",
            "--dataset", "refcoco", "--root", str(refer_root), "--quiet", "-o", str(preds)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 of 3 items are in" in err
    assert "resume with: minilocal eval --model" in err
    monkeypatch.setattr(G, "ground", real)
    assert main(argv) == 0 and len(preds.read_text().splitlines()) == 3


def test_eval_json_has_no_nan_and_counts_failures(model_dir, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    assert main(["eval", "--model", str(model_dir), "--heads", "L2H1", "--device", "cpu",
                 "--dataset", "shapes", "--split", "heldout", "--limit", "2", "--quiet",
                 "-o", str(preds)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    rec = json.loads(out)  # strict JSON: no NaN
    assert "NaN" not in out and rec["n"] == 2 and rec["failed"] == 0


# -- heads, expressions, images --------------------------------------------------------


def test_nan_frequencies_and_duplicate_heads_are_refused(tiny_llava_pair, picture, capsys):
    freq = np.zeros((3, 4))
    freq[1, 2] = np.nan
    with pytest.raises(HeadTableError, match="L1H2"):
        HeadTable(model_id="m", num_layers=3, num_heads=4, heads=[(0, 0)], frequencies=freq)
    with pytest.raises(HeadTableError, match="listed twice"):
        HeadTable(model_id="m", num_layers=3, num_heads=4, heads=["L1H1", (1, 1)])
    model, processor = tiny_llava_pair
    with pytest.raises(HeadTableError, match="listed twice"):
        Grounder(model, processor, get_adapter(model, processor), ["L2H1", "L2H1"])


@pytest.mark.parametrize("expr,match", [
    ("the red\x07 circle", "control character U\\+0007"),
    ("\x1b[31mthe circle", "control character U\\+001B"),
    ("🐶🐶", "no letter or digit"),
])
def test_control_characters_and_emoji_only_expressions(expr, match, picture, capsys):
    with pytest.raises(ExpressionError, match=match):
        check_expression(expr)
    assert main(["ground", str(picture), expr]) == 2
    assert "Fix:" in capsys.readouterr().err
    assert check_expression("the dog\tleft 🐶") == "the dog\tleft 🐶"


def test_a_url_is_not_called_a_missing_file():
    with pytest.raises(ImageError, match="'https://example.org/a/b.jpg' is a URL"):
        load_image("https://example.org/a/b.jpg")


def test_an_animated_gif_says_it_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "green")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(ImageConversionWarning, match="3 frames"):
        out = load_image(path)
    assert out.getpixel((5, 5))[0] > 200  # the first (red) frame
    with pytest.raises(ImageError):
        load_image(path, strict=True)


def test_max_pixels_is_offered_by_the_cli(picture, capsys):
    assert main(["ground", str(picture), "the dog", "--max-pixels", "1000"]) == 2
    assert "max_pixels=1,000" in capsys.readouterr().err


# -- speed -------------------------------------------------------------------------------


def test_a_shapes_draw_renders_only_the_items_it_draws(monkeypatch):
    from minilocal.data import load_dataset
    from minilocal.toy import world

    rendered = []
    real = world.shapes_item
    def counting(split, index, cfg):
        rendered.append(index)
        return real(split, index, cfg)

    monkeypatch.setattr(world, "shapes_item", counting)
    data = load_dataset("shapes", "selection")
    draw = data.sample(5, 0)
    assert len(data) == 1000 and len(rendered) == 5
    assert [it.item_id for it in draw] == [f"shapes/selection/{i:06d}" for i in rendered]


def test_bad_arguments_are_refused_before_the_model_stack_is_imported(tmp_path):
    code = ("import sys; from minilocal.cli import main; "
            "rc = main(['ground', 'missing.png', 'the dog']); "
            "print(rc, 'transformers' in sys.modules, 'torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr[-2000:]
    assert "not found" in proc.stderr
