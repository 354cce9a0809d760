"""Step 4 (RES): SAM refinement through segment-anything and transformers, on tiny SAMs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_sam import IMG_SIZE, tiny_segment_anything, tiny_transformers_sam

from minilocal import segmentation as seg
from minilocal.errors import ImageError, MinilocalError, SamError
from minilocal.segmentation import (
    Refinement,
    SegmentAnythingRefiner,
    TransformersSamRefiner,
    import_segment_anything,
    load_sam,
    sam_input_shape,
    sam_mask_prompt,
    segment_anything_to_transformers,
)

ROOT = Path(__file__).resolve().parents[1]
sa = import_segment_anything()
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402 (after the shim)

PROMPT = 4 * IMG_SIZE // 8  # tiny SAM: 8 x 8 embedding -> 32 x 32 mask prompt


def _image(w=80, h=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_sa():
    return tiny_segment_anything()


@pytest.fixture(scope="module")
def tiny_hf():
    return tiny_transformers_sam()


def _refiner(backend, tiny_sa, tiny_hf):
    if backend == "segment-anything":
        return SegmentAnythingRefiner(tiny_sa)
    return TransformersSamRefiner(*tiny_hf)


def _encoder(refiner):
    if isinstance(refiner, SegmentAnythingRefiner):
        return refiner.model.image_encoder
    return refiner.model.vision_encoder


def _mask_module(refiner):
    if isinstance(refiner, SegmentAnythingRefiner):
        return refiner.model.prompt_encoder.mask_downscaling
    return refiner.model.prompt_encoder.mask_embed


BACKENDS = ["segment-anything", "transformers"]


# --------------------------------------------------------------------------- stand-ins
@pytest.mark.parametrize("hw", [(50, 75), (75, 50), (64, 64), (20, 130), (200, 90)])
def test_resize_longest_side_of_uint8_image(hw):
    """SAM's ResizeLongestSide.apply_image (our resize + to_pil_image) vs two references."""
    rng = np.random.default_rng(1)
    im = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    out = ResizeLongestSide(IMG_SIZE).apply_image(im)
    assert out.dtype == np.uint8
    assert out.shape == (*sam_input_shape(hw, IMG_SIZE), 3)
    assert max(out.shape[:2]) == IMG_SIZE
    # transformers' own PIL processor resizes the same way (the two backends see one image)
    from transformers.image_processing_utils import SizeDict
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    ip = SamImageProcessorPil()
    ref = ip.resize(np.ascontiguousarray(im.transpose(2, 0, 1)),
                    size=SizeDict(longest_edge=IMG_SIZE), resample=ip.resample)
    np.testing.assert_array_equal(out, ref.transpose(1, 2, 0))
    # and SAM's torch path (antialiased bilinear) agrees up to filter differences
    t = torch.from_numpy(im).permute(2, 0, 1)[None].float()
    tt = F.interpolate(t, out.shape[:2], mode="bilinear", align_corners=False, antialias=True)
    assert np.abs(tt[0].permute(1, 2, 0).numpy() - out).mean() < 4.0


def test_resize_constant_image_and_int_size():
    im = Image.new("RGB", (30, 20), (10, 200, 77))
    out = seg._tv_resize(im, (7, 11))
    assert out.size == (11, 7)
    assert (np.asarray(out) == (10, 200, 77)).all()
    assert seg._tv_resize(im, 10).size == (15, 10)  # shorter side 10, longer int(10*30/20)
    assert seg._tv_resize(im.transpose(Image.Transpose.ROTATE_90), [10]).size == (10, 15)
    with pytest.raises(TypeError):
        seg._tv_resize(np.zeros((4, 4, 3), np.uint8), (2, 2))


def test_to_pil_image():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    im = seg._tv_to_pil_image(rgb)
    assert im.mode == "RGB" and im.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(im), rgb)
    # the BGR path of SamPredictor hands it a negative-stride view
    np.testing.assert_array_equal(np.asarray(seg._tv_to_pil_image(rgb[..., ::-1])), rgb[..., ::-1])
    assert seg._tv_to_pil_image(rgb[..., 0]).mode == "L"
    t = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # CHW float in [0, 1]
    back = np.asarray(seg._tv_to_pil_image(t)).astype(int)
    assert np.abs(back - rgb).max() <= 1
    with pytest.raises(TypeError):
        seg._tv_to_pil_image([[1, 2]])
    with pytest.raises(ValueError):
        seg._tv_to_pil_image(np.zeros((4, 4, 5), np.uint8))


def test_box_area():
    b = torch.tensor([[0, 0, 2, 3], [1, 1, 1, 5], [2.5, 1, 4, 2]])
    torch.testing.assert_close(seg._tv_box_area(b), torch.tensor([6, 0, 1.5]))
    assert seg._tv_box_area(torch.tensor([[0, 0, 4, 5]])).dtype == torch.int64


def _reference_nms(boxes, scores, cats, thr):
    """Greedy NMS in plain Python: visit by score (ties by index), drop IoU > thr, same cat."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else float("nan")

    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(not (cats[i] == cats[j] and iou(boxes[i], boxes[j]) > thr) for j in kept):
            kept.append(i)
    return kept


@st.composite
def _box_sets(draw):
    n = draw(st.integers(0, 12))
    coords = st.integers(0, 20)
    boxes = []
    for _ in range(n):
        x0, y0 = draw(coords), draw(coords)
        boxes.append([x0, y0, x0 + draw(st.integers(1, 10)), y0 + draw(st.integers(1, 10))])
    scores = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # ties on purpose
    cats = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    thr = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    return boxes, scores, cats, thr


@settings(max_examples=150, deadline=None)
@given(_box_sets())
def test_batched_nms_matches_reference(case):
    boxes, scores, cats, thr = case
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    s = torch.tensor(scores, dtype=torch.float32)
    c = torch.tensor(cats, dtype=torch.int64)
    keep = seg._tv_batched_nms(b, s, c, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _reference_nms(boxes, scores, cats, thr)
    single = seg._tv_nms(b, s, thr)
    assert single.tolist() == _reference_nms(boxes, scores, [0] * len(boxes), thr)


def test_nms_threshold_is_strict_and_categories_do_not_interact():
    b = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2]])  # IoU = 2 / 6 = 1/3
    s = torch.tensor([0.9, 0.8])
    assert seg._tv_nms(b, s, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert seg._tv_nms(b, s, 0.3).tolist() == [0]
    assert seg._tv_batched_nms(b, s, torch.tensor([0, 1]), 0.0).tolist() == [0, 1]
    assert seg._tv_batched_nms(b[:0], s[:0], torch.tensor([], dtype=torch.int64), 0.5).numel() == 0
    # kept indices come by decreasing score
    assert seg._tv_nms(torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6]]), torch.tensor([0.1, 0.7]), 0.5).tolist() == [1, 0]


def test_automatic_mask_generator_runs_on_the_stand_ins(tiny_sa):
    gen = sa.SamAutomaticMaskGenerator(
        tiny_sa, points_per_side=4, pred_iou_thresh=-10.0, stability_score_thresh=0.0,
        box_nms_thresh=0.5,
    )
    image = np.asarray(_image(64, 40))
    out = gen.generate(image)
    assert len(out) > 0
    boxes = torch.tensor([m["bbox"] for m in out], dtype=torch.float64)  # xywh
    boxes[:, 2:] += boxes[:, :2]
    for m in out:
        assert m["segmentation"].shape == (40, 64)
    # what batched_nms guarantees: no two kept masks overlap by more than the threshold
    iou = seg._tv_box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    assert float(iou.nan_to_num(0).max()) <= 0.5 + 1e-6


# --------------------------------------------------------------------------- sys.modules
def test_stand_ins_leave_sys_modules_clean_and_transformers_imports():
    r = _python("""
        import sys
        from minilocal.segmentation import import_segment_anything, segment_anything_import_mode
        sa = import_segment_anything()
        assert segment_anything_import_mode() == "stand-ins", segment_anything_import_mode()
        assert not [m for m in sys.modules if m.startswith("torchvision")]
        import transformers
        from transformers import SamModel
        from transformers.utils import is_torchvision_available
        assert not is_torchvision_available()
        import segment_anything  # now plain imports work
        from segment_anything.utils.transforms import ResizeLongestSide
        print("OK", segment_anything.SamPredictor.__name__)
    """)
    assert r.returncode == 0, r.stderr
    assert "OK SamPredictor" in r.stdout


def test_stand_ins_after_a_failed_plain_import_and_after_transformers():
    r = _python("""
        import sys
        import transformers  # imported before the shim
        try:
            import segment_anything
        except ImportError as exc:
            assert "torchvision" in str(exc)
        else:
            raise SystemExit("segment_anything imported without torchvision?")
        from minilocal.segmentation import import_segment_anything
        sa = import_segment_anything()
        assert not [m for m in sys.modules if m.startswith("torchvision")]
        from transformers import SamModel  # lazy import after the shim still works
        print("OK", hasattr(sa, "SamAutomaticMaskGenerator"))
    """)
    assert r.returncode == 0, r.stderr
    assert "OK True" in r.stdout


def test_context_manager_does_not_touch_existing_modules():
    before = {k for k in sys.modules if k.startswith("torchvision")}
    with seg.torchvision_stand_ins():
        from torchvision.ops import boxes

        assert boxes.batched_nms is seg._tv_batched_nms
    assert {k for k in sys.modules if k.startswith("torchvision")} == before


def _fake_torchvision(root: Path, broken: bool = False):
    pkg = root / "torchvision"
    (pkg / "transforms").mkdir(parents=True)
    (pkg / "ops").mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n"
                                     if broken else "REAL = True\n")
    (pkg / "transforms" / "__init__.py").write_text("")
    (pkg / "transforms" / "functional.py").write_text(
        "def resize(*a, **k): return 'real'\ndef to_pil_image(*a, **k): return 'real'\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "boxes.py").write_text(
        "def batched_nms(*a, **k): return 'real'\ndef box_area(*a, **k): return 'real'\n")


def test_no_op_when_a_real_torchvision_is_importable(tmp_path):
    _fake_torchvision(tmp_path)
    r = _python("""
        import sys
        from minilocal.segmentation import import_segment_anything, segment_anything_import_mode
        import_segment_anything()
        from segment_anything.utils import transforms
        assert segment_anything_import_mode() == "torchvision"
        assert transforms.resize() == "real", "the installed torchvision must be used"
        assert getattr(sys.modules["torchvision"], "REAL", False)
        print("OK")
    """, {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_broken_torchvision_raises_sam_error(tmp_path):
    _fake_torchvision(tmp_path, broken=True)
    r = _python("""
        from minilocal.errors import SamError
        from minilocal.segmentation import import_segment_anything
        try:
            import_segment_anything()
        except SamError as exc:
            print("SAMERROR", exc.fix)
    """, {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert "SAMERROR" in r.stdout and "torchvision" in r.stdout, r.stderr


def test_missing_segment_anything_names_the_fix(monkeypatch):
    real = seg.importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "segment_anything")
    monkeypatch.setattr(seg.importlib.util, "find_spec",
                        lambda name, *a: None if name == "segment_anything" else real(name, *a))
    with pytest.raises(SamError) as e:
        import_segment_anything()
    assert "pip install segment-anything" in str(e.value)
    assert isinstance(e.value, MinilocalError)


# --------------------------------------------------------------------------- mask prompt
@pytest.mark.parametrize("landscape", [True, False])
def test_mask_prompt_lands_on_the_same_region_of_sams_frame(landscape):
    # 128 x 64 image -> 64 x 32 in SAM's 64-px square; one 32-grid cell = 2 px = 4 image px
    H, W = (64, 128) if landscape else (128, 64)
    mask = np.zeros((H, W), bool)
    y0, y1, x0, x1 = (8, 24, 16, 48) if landscape else (16, 48, 8, 24)
    mask[y0:y1, x0:x1] = True
    p = sam_mask_prompt(mask, IMG_SIZE, PROMPT, logit=7.0)
    assert p.shape == (PROMPT, PROMPT) and p.dtype == np.float32
    expect = np.full((PROMPT, PROMPT), -7.0, np.float32)
    expect[y0 // 4:y1 // 4, x0 // 4:x1 // 4] = 7.0
    np.testing.assert_allclose(p, expect, atol=1e-5)


def test_mask_prompt_padding_is_background():
    H, W = 30, 90  # -> 21 x 64 in the square (21.33 rounded), padded below
    p = sam_mask_prompt(np.ones((H, W), bool), IMG_SIZE, PROMPT)
    new_h, _ = sam_input_shape((H, W), IMG_SIZE)
    cells_inside = new_h // 2  # rows of the 32-grid wholly inside the image (2 px each)
    assert (p[:cells_inside] == 10.0).all()
    assert (p[(new_h + 1) // 2:] == -10.0).all()  # rows wholly in the padding
    soft = sam_mask_prompt(np.full((H, W), 0.25), IMG_SIZE, PROMPT)
    np.testing.assert_allclose(soft[:cells_inside], 10.0 * (2 * 0.25 - 1), atol=1e-5)


@pytest.mark.parametrize("hw", [(50, 75), (75, 50), (37, 101)])
def test_mask_prompt_agrees_with_sams_own_transform(hw):
    """Reference: push the mask through SAM's ResizeLongestSide like an image, pad, area-pool."""
    H, W = hw
    yy, xx = np.mgrid[:H, :W]
    mask = ((yy - 0.4 * H) ** 2 / (0.3 * H) ** 2 + (xx - 0.6 * W) ** 2 / (0.25 * W) ** 2) < 1
    img = np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    resized = ResizeLongestSide(IMG_SIZE).apply_image(img)[:, :, 0] / 255.0
    square = np.zeros((IMG_SIZE, IMG_SIZE))
    square[: resized.shape[0], : resized.shape[1]] = resized
    k = IMG_SIZE // PROMPT
    ref = square.reshape(PROMPT, k, PROMPT, k).mean((1, 3))  # [32, 32] fraction
    ours = (sam_mask_prompt(mask, IMG_SIZE, PROMPT, logit=1.0) + 1) / 2
    assert np.abs(ours - ref).max() < 0.25  # bilinear vs exact area, at the edges only
    assert np.abs(ours - ref).mean() < 0.02
    a, b = ours > 0.5, ref > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.9


@settings(max_examples=40, deadline=None)
@given(
    st.integers(24, 160), st.integers(24, 160),
    st.floats(0.0, 0.5), st.floats(0.0, 0.5), st.floats(0.3, 0.5), st.floats(0.3, 0.5),
)
def test_mask_prompt_round_trips_through_sams_postprocess(tiny_sa, H, W, fy, fx, fh, fw):
    """SAM's own upsampling (postprocess_masks) of our prompt gives the mask back."""
    mask = np.zeros((H, W), bool)
    y0, x0 = int(fy * H), int(fx * W)
    mask[y0:y0 + max(1, int(fh * H)), x0:x0 + max(1, int(fw * W))] = True
    p = torch.from_numpy(sam_mask_prompt(mask, IMG_SIZE, PROMPT))[None, None]
    back = tiny_sa.postprocess_masks(p, sam_input_shape((H, W), IMG_SIZE), (H, W))[0, 0] > 0
    back = back.numpy()
    # one prompt cell is up to 4 image px here; the boundary may move by about half a cell
    cell = IMG_SIZE / PROMPT * max(H, W) / IMG_SIZE
    assert (back ^ mask).sum() <= 2 * cell * (mask.sum(0).max() + mask.sum(1).max()) * 1.01
    assert (back & mask).sum() / (back | mask).sum() > 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_refiner_passes_the_prompt_to_sams_mask_encoder(backend, tiny_sa, tiny_hf):
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    image = _image(90, 50)
    mask = np.zeros((50, 90), bool)
    mask[10:30, 20:70] = True
    seen = []
    h = _mask_module(refiner).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        refiner.refine(image, [15, 5, 75, 40], mask_prompt=mask)
        refiner.refine(image, [15, 5, 75, 40], mask_prompt=mask, mask_logit=3.0)
    finally:
        h.remove()
    assert len(seen) == 2 and seen[0].shape == (1, 1, PROMPT, PROMPT)
    np.testing.assert_allclose(seen[0][0, 0].numpy(), sam_mask_prompt(mask, IMG_SIZE, PROMPT))
    np.testing.assert_allclose(seen[1][0, 0].numpy(),
                               sam_mask_prompt(mask, IMG_SIZE, PROMPT, logit=3.0))


# --------------------------------------------------------------------------- refiners
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wh", [(80, 48), (48, 80), (64, 64), (33, 100)])
def test_mask_has_the_image_size(backend, wh, tiny_sa, tiny_hf):
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    W, H = wh
    for multimask in (False, True):
        r = refiner.refine(_image(W, H), [W * 0.2, H * 0.1, W * 0.7, H * 0.9], multimask=multimask)
        assert isinstance(r, Refinement)
        assert r.mask.shape == (H, W) and r.mask.dtype == bool
        assert r.scores.shape == ((3,) if multimask else (1,))
        assert r.score == pytest.approx(float(r.scores[r.index]))


def _direct_sa(sam, image, box, multimask):
    """segment-anything's documented path, with a fresh predictor."""
    pred = sa.SamPredictor(sam)
    pred.set_image(np.asarray(image))
    masks, scores, _ = pred.predict(box=np.asarray(box, np.float32), multimask_output=multimask)
    return masks, scores


def _direct_hf(model, processor, image, box, multimask):
    """transformers' documented path: the processor scales the box, post_process_masks."""
    inputs = processor(images=image, input_boxes=[[list(map(float, box))]], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(),
                    multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                         inputs["reshaped_input_sizes"])[0][0]
    return masks.numpy(), out.iou_scores[0, 0].numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_multimask_picks_the_argmax_and_matches_the_library(backend, tiny_sa, tiny_hf):
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    for wh, box in [((80, 48), [10, 5, 50, 40]), ((48, 80), [5, 30, 40, 75])]:
        image = _image(*wh, seed=3)
        for multimask in (True, False):
            if backend == "segment-anything":
                masks, scores = _direct_sa(tiny_sa, image, box, multimask)
            else:
                masks, scores = _direct_hf(*tiny_hf, image, box, multimask)
            r = refiner.refine(image, box, multimask=multimask)
            np.testing.assert_allclose(r.scores, scores, rtol=1e-5, atol=1e-6)
            assert r.index == int(np.argmax(scores)) and (multimask or r.index == 0)
            np.testing.assert_array_equal(r.mask, masks[r.index])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_prompt_changes_the_output(backend, tiny_sa, tiny_hf):
    """The mask prompt reaches SAM's mask DECODER: the dense prompt embedding it receives
    differs from the no-mask embedding and between two prompts that cover different
    regions, and so do the decoder's low-res logits.

    Compared on regions, not on the scale of one region: with zero conv biases (the
    initialisation of transformers' SamModel) the mask encoder's first conv + channel
    LayerNorm make a uniformly scaled prompt give the same embedding, so "0.6 x mask vs mask"
    tests the init, not the refiner. The prompt's values themselves are checked in
    test_refiner_passes_the_prompt_to_sams_mask_encoder.
    """
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    image, box = _image(), [10, 5, 50, 40]
    seen = []

    def keep(module, args, kwargs, output):
        seen.append((kwargs["dense_prompt_embeddings"].detach().clone(),
                     output[0].detach().float().clone()))

    h = refiner.model.mask_decoder.register_forward_hook(keep, with_kwargs=True)
    try:
        left = np.zeros((48, 80), bool)
        left[10:30, 5:35] = True
        right = np.zeros((48, 80), bool)
        right[15:45, 45:75] = True
        plain = refiner.refine(image, box)
        with_left = refiner.refine(image, box, mask_prompt=left)
        refiner.refine(image, box, mask_prompt=right)
    finally:
        h.remove()
    assert len(seen) == 3
    (d_plain, l_plain), (d_left, l_left), (d_right, l_right) = seen
    assert d_plain.shape[-3:] == d_left.shape[-3:] == d_right.shape[-3:]
    # the no-mask embedding is constant over the grid; a region prompt is not
    assert torch.allclose(d_plain, d_plain[..., :1, :1].expand_as(d_plain))
    assert not torch.allclose(d_left, d_left[..., :1, :1].expand_as(d_left))
    assert not torch.equal(d_plain.expand_as(d_left), d_left)
    assert not torch.equal(d_left, d_right)
    assert not torch.equal(l_plain, l_left) and not torch.equal(l_left, l_right)
    assert plain.mask.shape == with_left.mask.shape == (48, 80)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_encoder_call_for_several_boxes(backend, tiny_sa, tiny_hf):
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    calls = []
    h = _encoder(refiner).register_forward_hook(lambda *a: calls.append(1))
    try:
        image = _image(seed=5)
        results = [refiner.refine(image, b) for b in ([0, 0, 40, 40], [30, 10, 79, 47], [5, 5, 20, 20])]
        assert len(calls) == 1 and refiner.encoder_calls == 1
        assert len({r.mask.tobytes() for r in results}) > 1  # the boxes do matter
        refiner.refine(_image(seed=5), [0, 0, 40, 40])  # same pixels, new object: reused
        assert len(calls) == 1
        refiner.refine(_image(seed=6), [0, 0, 40, 40])  # another image: encoded
        assert len(calls) == 2 and refiner.encoder_calls == 2
        again = refiner.refine(image, [0, 0, 40, 40])  # back to the first one
        np.testing.assert_array_equal(again.mask, results[0].mask)
        assert len(calls) == 3
    finally:
        h.remove()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise(backend, tiny_sa, tiny_hf):
    refiner = _refiner(backend, tiny_sa, tiny_hf)
    image = _image()  # 80 x 48
    for box in ([1, 2, 3], [0, 0, np.nan, 4], [50, 5, 10, 40], [100, 60, 120, 70], "box"):
        with pytest.raises(SamError):
            refiner.refine(image, box)
    for mask in (np.zeros((80, 48), bool), np.full((48, 80), 2.0), np.full((48, 80), -0.1),
                 np.full((48, 80), "a")):
        with pytest.raises(SamError):
            refiner.refine(image, [10, 5, 50, 40], mask_prompt=mask)
    with pytest.raises(ImageError):
        refiner.refine(np.zeros((48, 80, 3), np.uint8), [10, 5, 50, 40])
    # a grayscale image is converted (with a warning), not refused
    with pytest.warns(UserWarning):
        r = refiner.refine(image.convert("L"), [10, 5, 50, 40])
    assert r.mask.shape == (48, 80)


def test_wrappers_refuse_the_wrong_objects(tiny_sa, tiny_hf):
    model, processor = tiny_hf
    with pytest.raises(SamError):
        SegmentAnythingRefiner(model)
    with pytest.raises(SamError):
        TransformersSamRefiner(tiny_sa, processor)
    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    with pytest.raises(SamError, match="longest_edge"):
        TransformersSamRefiner(model, SamProcessor(image_processor=SamImageProcessorPil()))
    assert isinstance(SegmentAnythingRefiner(sa.SamPredictor(tiny_sa)), SegmentAnythingRefiner)


# --------------------------------------------------------------------------- consistency
def test_same_weights_same_masks_in_both_backends(tiny_sa):
    model, processor = segment_anything_to_transformers(tiny_sa)
    a, b = SegmentAnythingRefiner(tiny_sa), TransformersSamRefiner(model, processor)
    for wh, box in [((80, 48), [10, 5, 50, 40]), ((48, 80), [5, 30, 40, 75]),
                    ((101, 37), [0, 0, 100, 36])]:
        image = _image(*wh, seed=7)
        mask = np.zeros(wh[::-1], bool)
        mask[wh[1] // 4: wh[1] // 2, wh[0] // 3: 2 * wh[0] // 3] = True
        for multimask in (False, True):
            for prompt in (None, mask):
                ra = a.refine(image, box, multimask=multimask, mask_prompt=prompt)
                rb = b.refine(image, box, multimask=multimask, mask_prompt=prompt)
                np.testing.assert_allclose(ra.scores, rb.scores, atol=1e-5)
                assert ra.index == rb.index
                assert (ra.mask != rb.mask).mean() < 1e-3  # float round-off at the 0 level


def test_conversion_round_trip_through_save_pretrained(tiny_sa, tmp_path):
    model, processor = segment_anything_to_transformers(tiny_sa)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    refiner = load_sam("transformers", tmp_path, device="cpu")
    assert isinstance(refiner, TransformersSamRefiner)
    direct = SegmentAnythingRefiner(tiny_sa).refine(_image(), [10, 5, 50, 40], multimask=True)
    loaded = refiner.refine(_image(), [10, 5, 50, 40], multimask=True)
    np.testing.assert_allclose(direct.scores, loaded.scores, atol=1e-5)


# --------------------------------------------------------------------------- loading
def test_load_sam_errors_name_the_fix(tmp_path):
    with pytest.raises(SamError, match="segment-anything"):
        load_sam("sam2", "x")
    with pytest.raises(SamError, match="vit_b"):
        load_sam("segment-anything", tmp_path / "x.pth", model_type="vit_tiny")
    with pytest.raises(SamError) as e:
        load_sam("segment-anything", tmp_path / "missing.pth")
    assert "sam_vit_b_01ec64.pth" in e.value.fix
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in e.value.fix
    wrong = tmp_path / "large.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 1, 1, 1)}, wrong)
    with pytest.raises(SamError) as e:
        load_sam("segment-anything", wrong, model_type="vit_b")
    assert "model_type='vit_l'" in e.value.fix
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(SamError, match="not a segment-anything state dict"):
        load_sam("segment-anything", other)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SamError, match="cannot read"):
        load_sam("segment-anything", junk)
    with pytest.raises(SamError, match="folder not found"):
        load_sam("transformers", tmp_path / "no_such_folder")
    with pytest.raises(SamError, match="segment-anything"):
        load_sam("transformers", junk)  # a .pth-like file given to the folder backend


def test_load_sam_from_checkpoint_loads_the_weights(tiny_sa, tmp_path, monkeypatch):
    """The load path (registry build + load_state_dict) with the registry pointed at the tiny
    SAM: a differently seeded model must come out equal to the saved one."""
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sa.state_dict(), path)
    monkeypatch.setitem(seg.OFFICIAL_CHECKPOINTS, "vit_b", ("tiny.pth", 32))
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", lambda: tiny_segment_anything(seed=1))
    loaded = load_sam("segment-anything", path, model_type="vit_b", device="cpu")
    ref = SegmentAnythingRefiner(tiny_sa).refine(_image(), [10, 5, 50, 40], multimask=True)
    got = loaded.refine(_image(), [10, 5, 50, 40], multimask=True)
    np.testing.assert_array_equal(got.scores, ref.scores)
    fresh = SegmentAnythingRefiner(tiny_segment_anything(seed=1))
    assert not np.array_equal(fresh.refine(_image(), [10, 5, 50, 40], multimask=True).scores, ref.scores)
