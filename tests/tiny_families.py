"""Tiny random models of every adapter family, built from configs in code.

Each builder returns ``(model, processor)``: the family's real model class with a 1-2 layer
random config, and its real processor class configured tiny, around a word-level tokenizer
built here (nothing is downloaded). Float32, eval mode, seeded.

``local_vision(model)`` zeroes the output projection of every attention module outside the
language model: every image-token feature then depends only on its own pixels (patch
embedding, position embedding, per-token norms and MLPs, projector; merges and poolings of
neighbouring patches stay local). The geometry tests use this to find out, through the
model itself, which image pixels each grid cell sees (:func:`changed_cells`); a tower that
still mixed patches would fail those tests, not pass them.

Video processors of transformers need torchvision, which cannot be installed on this
machine (TOOLCHAIN.md); processors that take one are built with ``video_processor=None``
(:func:`no_video_processor`). Images never need it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image
from tiny_models import WORDS
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.processing_utils import ProcessorMixin

CHAT_WORDS = ["system", "user", "assistant", "model", "you", "are", "helpful", "Assistant", "User"]


def family_tokenizer(named: dict[str, str], extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose special tokens are never split.

    Args:
        named: Attribute name -> token, e.g. ``{"image_token": "<|image_pad|>"}``; the
            tokenizer gets ``.image_token`` and ``.image_token_id`` as real ones do.
        extra: More special tokens without an attribute (chat markers, ``<row_1_col_1>``...).
    """
    specials = ["<pad>", "<s>", "</s>", "<unk>", *named.values(), *extra]
    specials = list(dict.fromkeys(specials))
    words = sorted(set(WORDS) | {w for w in CHAT_WORDS if w.strip()})
    vocab = {w: i for i, w in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", extra_special_tokens=dict(named),
    )
    fast.add_tokens([t for t in extra if t not in named.values()], special_tokens=True)
    return fast


@contextlib.contextmanager
def no_video_processor():
    """Let a processor be built with ``video_processor=None`` (no torchvision here)."""
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):
        if arg is None and "video" in name:
            return None
        return original(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def _finish(model, attn_implementation: str, local: bool = False):
    if local:
        local_vision(model)
    model.eval()
    model.set_attn_implementation(attn_implementation)
    return model


_OUT_PROJ = ("out_proj", "o_proj", "proj", "projection_layer", "dense", "wo")


def local_vision(model):
    """Zero the output projections of the attention modules outside the language model.

    Returns:
        The model (changed in place) and the number of projections zeroed.
    """
    zeroed = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if "language_model" in name or "Attention" not in type(module).__name__:
                continue
            for child_name in _OUT_PROJ:
                child = getattr(module, child_name, None)
                if isinstance(child, torch.nn.Linear):
                    child.weight.zero_()
                    if child.bias is not None:
                        child.bias.zero_()
                    zeroed += 1
                    break
    assert zeroed > 0, f"no vision attention found in {type(model).__name__}"
    return model


# --------------------------------------------------------------------------- probes
def square_image(size=(64, 40), box=(16, 8, 32, 24), seed=0, colour=(255, 0, 0)):
    """A random-noise RGB image (W, H = size) and the same image with a coloured box.

    Returns:
        (plain, with_square, mask): two PIL images and the [H, W] bool mask of the box.
    """
    W, H = size
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    painted = arr.copy()
    painted[y0:y1, x0:x1] = colour
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return Image.fromarray(arr), Image.fromarray(painted), mask


def image_token_features(adapter, image, expr="the red square") -> tuple[torch.Tensor, object]:
    """The decoder's input embeddings at the adapter's image positions, in grid order.

    Returns:
        ([n, D] features, prepared).
    """
    prepared = adapter.prepare(image, expr)
    seen = {}

    def hook(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()
        raise _Enough  # the decoder itself is not needed: stop the forward here

    handle = adapter.decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs, use_cache=False)
    except _Enough:
        pass
    finally:
        handle.remove()
    return seen["embeds"][0, prepared.positions], prepared


class _Enough(Exception):
    """Raised by :func:`image_token_features`'s hook once the decoder's inputs are seen."""


def changed_cells(adapter, plain, painted) -> tuple[np.ndarray, object]:
    """How much each grid cell's image-token feature changes when the square is painted.

    Needs a model built with ``local=True`` (:func:`local_vision`).

    Returns:
        ([h, w] max abs change per cell, prepared of the painted image).
    """
    a, _ = image_token_features(adapter, plain)
    b, prepared = image_token_features(adapter, painted)
    assert a.shape == b.shape
    change = (a - b).abs().amax(-1)  # [n]
    return change.reshape(prepared.grid).numpy(), prepared


def assert_geometry_matches_model(adapter, size=(64, 40), box=(16, 8, 40, 30), seed=0):
    """The cells the model sees image pixels in are the cells the geometry puts them in.

    Two probes, both through the model itself (:func:`changed_cells`):

    1. Point probes: for a few grid cells whose centre (by the geometry) lies inside the
       image, a small square painted around that centre must change that cell's token
       most. A geometry off by a fraction of a cell (stretch instead of pad, a missed
       unpad, tiles in the wrong order) moves the centre into another cell.
    2. A larger square: every changed cell is covered by it (``image_mask_to_grid``) or
       next to a covered cell (resampling filters smear the edge by a pixel or two);
       every cell at least half covered changed; the grid box of the covered cells,
       mapped with ``grid_box_to_image``, contains the square (to a pixel) and overshoots
       it by less than one cell on each side.

    Returns:
        The prepared input of the painted image.
    """
    from scipy import ndimage

    plain, painted, mask = square_image(size=size, box=box, seed=seed)
    base, prepared = image_token_features(adapter, plain)
    geometry = prepared.geometry
    assert geometry.image_size == size and tuple(geometry.grid) == tuple(prepared.grid)
    h, w = prepared.grid
    W, H = size
    sx, sy = geometry.scale
    ox, oy = geometry.offset
    half = max(1.0, 0.2 * min(sx, sy))  # half side of the probe square, image pixels
    inside = [
        (r, c) for r in range(h) for c in range(w)
        if half + 1 <= ox + (c + 0.5) * sx <= W - half - 1
        and half + 1 <= oy + (r + 0.5) * sy <= H - half - 1
    ]
    assert inside, "no grid cell has its centre inside the image"
    picks = sorted({inside[0], inside[-1], inside[len(inside) // 2], inside[len(inside) // 3]})
    arr = np.asarray(plain).copy()
    for r, c in picks:
        cx, cy = ox + (c + 0.5) * sx, oy + (r + 0.5) * sy
        probe = arr.copy()
        probe[int(round(cy - half)) : int(round(cy + half)), int(round(cx - half)) : int(round(cx + half))] = (255, 0, 0)
        feats, _ = image_token_features(adapter, Image.fromarray(probe))
        change = (feats - base).abs().amax(-1).reshape(h, w).numpy()
        got = np.unravel_index(change.argmax(), change.shape)
        assert tuple(int(v) for v in got) == (r, c), (
            f"a dot at the centre of cell {(r, c)} changed cell {tuple(got)} most:\n{change}"
        )

    change, prepared = changed_cells(adapter, plain, painted)
    cover = geometry.image_mask_to_grid(mask)  # [h, w] in [0, 1]
    changed = change > 1e-6 * max(change.max(), 1e-12)
    near = ndimage.binary_dilation(cover > 0, structure=np.ones((3, 3), bool))
    assert change.max() > 0, "painting the square changed no image token"
    assert not (changed & ~near).any(), f"changed cells far from the square:\n{changed}\n{cover}"
    assert changed[cover >= 0.5].all(), f"covered cells unchanged:\n{changed}\n{cover}"
    ys, xs = np.nonzero(cover > 0)
    box_grid = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    box_image = geometry.grid_box_to_image(box_grid)
    x0, y0, x1, y1 = box
    # cells own the pixels whose CENTRES they hold: allow one pixel at the square's edge
    assert box_image[0] <= x0 + 1 and box_image[1] <= y0 + 1
    assert box_image[2] >= x1 - 1 and box_image[3] >= y1 - 1
    assert x0 - box_image[0] < sx and y0 - box_image[1] < sy
    assert box_image[2] - x1 < sx and box_image[3] - y1 < sy
    return prepared


# --------------------------------------------------------------------------- Qwen2.5-VL
def tiny_qwen2_5_vl(
    *, local: bool = False, layers: int = 2, heads: int = 4, kv_heads: int = 2,
    min_pixels: int = 28 * 28, max_pixels: int = 112 * 168, attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (patch 14, merge 2)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = family_tokenizer(
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        ("<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"),
    )
    ids = tok.convert_tokens_to_ids
    hidden = 64
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
            window_size=56, fullatt_block_indexes=[0],
        ),
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                             "rope_theta": 10000.0},
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    model = _finish(Qwen2_5_VLForConditionalGeneration(cfg), attn_implementation, local)
    ip = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
        temporal_patch_size=2,
    )
    with no_video_processor():
        processor = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=None)
    return model, processor


# --------------------------------------------------------------------------- LLaVA-NeXT / OneVision
def _text_config(tok, cls_name="LlamaConfig", layers=2, heads=4, kv_heads=2, hidden=64, **kw):
    import transformers

    return getattr(transformers, cls_name)(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw,
    )


def tiny_llava_next(
    *, local: bool = False, layers: int = 2, attn_implementation: str = "sdpa", seed: int = 0
):
    """LlavaNextForConditionalGeneration + LlavaNextProcessor: CLIP 32 px tiles of 4x4
    patches, pinpoints 32x64, 64x32, 64x64."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = family_tokenizer({"image_token": "<image>"}, ("USER", "ASSISTANT"))
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, image_size=32, patch_size=8,
        ),
        text_config=_text_config(tok, layers=layers),
        image_token_id=tok.image_token_id, image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = _finish(LlavaNextForConditionalGeneration(cfg), attn_implementation, local)
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def tiny_llava_onevision(
    *, local: bool = False, layers: int = 2, max_tiles: int = 1,
    attn_implementation: str = "sdpa", seed: int = 0,
):
    """LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor: SigLIP 32 px tiles,
    Qwen2 decoder; ``anyres_max_{max_tiles}`` (1: the high-res grid is always shrunk)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = family_tokenizer(
        {"image_token": "<image>", "video_token": "<video>"}, ("<|im_start|>", "<|im_end|>")
    )
    pinpoints = [[a, b] for a in (32, 64, 96) for b in (32, 64, 96)]
    aspect = f"anyres_max_{max_tiles}"
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, image_size=32, patch_size=8,
        ),
        text_config=_text_config(tok, "Qwen2Config", layers=layers),
        image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
        image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
    )
    model = _finish(LlavaOnevisionForConditionalGeneration(cfg), attn_implementation, local)
    ip = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints,
    )
    with no_video_processor():
        processor = LlavaOnevisionProcessor(
            image_processor=ip, tokenizer=tok, video_processor=None, num_image_tokens=16,
            vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
        )
    return model, processor


# --------------------------------------------------------------------------- InternVL
def tiny_internvl(
    *, local: bool = False, layers: int = 2, max_patches: int = 6,
    attn_implementation: str = "sdpa", seed: int = 0,
):
    """InternVLForConditionalGeneration + InternVLProcessor: 32 px tiles of 8x8 patches,
    pixel-shuffled to 4x4 = 16 tokens per view, up to ``max_patches`` tiles + thumbnail."""
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    torch.manual_seed(seed)
    tok = family_tokenizer(
        {
            "start_image_token": "<img>", "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
        },
        ("<|im_start|>", "<|im_end|>"),
    )
    cfg = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=(32, 32), patch_size=(4, 4),
        ),
        text_config=_text_config(tok, "Qwen2Config", layers=layers),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=16,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = _finish(InternVLForConditionalGeneration(cfg), attn_implementation, local)
    ip = GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1,
        max_patches=max_patches,
    )
    with no_video_processor():
        processor = InternVLProcessor(
            image_processor=ip, tokenizer=tok, video_processor=None, image_seq_length=16
        )
    return model, processor


# --------------------------------------------------------------------------- Gemma 3
def tiny_gemma3(
    *, local: bool = False, sliding_window: int = 8, attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """Gemma3ForConditionalGeneration + Gemma3Processor: SigLIP 32 px, 8x8 patches pooled to
    4x4 = 16 tokens; 2 decoder layers: a sliding-window one (window ``sliding_window``,
    shorter than the prompt) and a global one."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    torch.manual_seed(seed)
    tok = family_tokenizer(
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
         "eoi_token": "<end_of_image>"},
        ("<start_of_turn>", "<end_of_turn>"),
    )
    ids = tok.convert_tokens_to_ids
    text = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg = Gemma3Config(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=4,
        ),
        text_config=text, mm_tokens_per_image=16, boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # initialised to zeros, which would make every image token equal
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    model = _finish(model, attn_implementation, local)
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=16)
    return model, processor


# --------------------------------------------------------------------------- SmolVLM / Idefics3
def tiny_smolvlm(
    *, local: bool = False, layers: int = 2, model_type: str = "idefics3",
    attn_implementation: str = "sdpa", seed: int = 0,
):
    """Idefics3ForConditionalGeneration + Idefics3Processor, as SmolVLM-256M/500M are:
    32 px views of 8x8 patches pixel-shuffled (scale 2) to 4x4 = 16 tokens; images are
    resized to a long side of 64 px, split into 32 px tiles + a global view.

    ``model_type="smolvlm"`` builds SmolVLMForConditionalGeneration (SmolVLM2) instead,
    with the same Idefics3Processor: SmolVLMProcessor needs num2words and a video
    processor (torchvision), neither installable here; its image prompt is the same."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMVisionConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    torch.manual_seed(seed)
    rowcol = tuple(f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5))
    tok = family_tokenizer(
        {"image_token": "<image>"},
        ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>",
         *rowcol),
    )
    config_cls, vision_cls, model_cls = {
        "idefics3": (Idefics3Config, Idefics3VisionConfig, Idefics3ForConditionalGeneration),
        "smolvlm": (SmolVLMConfig, SmolVLMVisionConfig, SmolVLMForConditionalGeneration),
    }[model_type]
    cfg = config_cls(
        vision_config=vision_cls(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=4,
        ),
        text_config=_text_config(tok, layers=layers), scale_factor=2,
        image_token_id=tok.image_token_id,
    )
    model = _finish(model_cls(cfg), attn_implementation, local)
    ip = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True,
    )
    processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=16)
    return model, processor


# --------------------------------------------------------------------------- DeepSeek-VL
def tiny_deepseek_vl(
    *, local: bool = False, hybrid: bool = False, attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """DeepseekVL(Hybrid)ForConditionalGeneration + its processor: SigLIP 32 px, patch 8
    (4x4 = 16 tokens), long side resized to 32 and padded to a square; the hybrid model adds
    a tiny SAM view of 64 px."""
    import transformers

    torch.manual_seed(seed)
    tok = family_tokenizer({"image_token": "<image_placeholder>"}, ("User", "Assistant"))
    prefix = "DeepseekVLHybrid" if hybrid else "DeepseekVL"
    kwargs = dict(
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ).to_dict(),
        text_config=_text_config(tok).to_dict(),
        image_token_id=tok.image_token_id,
    )
    if hybrid:
        kwargs["high_res_vision_config"] = dict(
            model_type="sam_vision_model", hidden_size=32, output_channels=16,
            num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=4,
            mlp_dim=64, global_attn_indexes=[1], window_size=4, num_pos_feats=8,
        )
    cfg = getattr(transformers, prefix + "Config")(**kwargs)
    model = getattr(transformers, prefix + "ForConditionalGeneration")(cfg)
    model = _finish(model, attn_implementation, local)
    module = getattr(transformers.models, "deepseek_vl_hybrid" if hybrid else "deepseek_vl")
    ip_module = getattr(module, "image_processing_pil_" + module.__name__.rsplit(".", 1)[1])
    ip_kwargs = dict(size={"height": 32, "width": 32}, min_size=4)
    if hybrid:
        ip_kwargs["high_res_size"] = {"height": 64, "width": 64}
    ip = getattr(ip_module, prefix + "ImageProcessorPil")(**ip_kwargs)
    processor = getattr(transformers, prefix + "Processor")(
        image_processor=ip, tokenizer=tok, num_image_tokens=16
    )
    return model, processor
