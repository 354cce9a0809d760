"""Replicas of real checkpoints: their processor settings and layer/head layout, tiny widths.

Each ``tests/real_configs/<alias>.json`` records, as facts with their sources (and what
could not be confirmed), the values of a supported checkpoint that decide the method: image
size, patch size, merge / pixel shuffle, tiling, mean and std, vision feature layer and
strategy, layers / heads / key-value heads, sliding windows, the chat template's text.
:func:`build_replica` turns one into a model of the real class with:

* the real processor class (PIL backend) with the recorded settings: real input
  resolutions, real token counts and grids;
* the real decoder layout (layers, query heads, key/value heads, sliding-window layers),
  at a head width of 8 (``hidden = heads * 8``); ``layers=`` lowers the layer count for
  the checks that run the eager reference (its memory grows with layers * heads * T^2);
* a one-layer vision tower of width 16 at the real image and patch size;
* a word-level tokenizer (tests/tiny_families.py) holding the family's special tokens, so
  the image-token *id* is the replica's own; the real id is recorded in the data file.

Random weights, float32, seeded. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_families import _finish, family_tokenizer, no_video_processor

FOLDER = Path(__file__).resolve().parent / "real_configs"
HEAD_DIM = 8
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def load_facts(name: str) -> dict:
    """The recorded facts of one checkpoint (``tests/real_configs/<name>.json``)."""
    return json.loads((FOLDER / f"{name}.json").read_text(encoding="utf-8"))


def all_names() -> list[str]:
    """Every checkpoint with a data file, sorted."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def _text(tok, facts: dict, layers: int | None, cls_name: str = "LlamaConfig", **extra):
    import transformers

    t = facts["text"]
    heads, kv = int(t["num_attention_heads"]), int(t["num_key_value_heads"])
    kw = dict(
        vocab_size=len(tok), hidden_size=heads * HEAD_DIM, intermediate_size=heads * HEAD_DIM,
        num_hidden_layers=int(layers or t["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=HEAD_DIM,
        max_position_embeddings=int(t["max_position_embeddings"]),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if t.get("sliding_window") is not None and cls_name == "MistralConfig":
        kw["sliding_window"] = int(t["sliding_window"])
    kw.update(extra)
    return getattr(transformers, cls_name)(**kw)


def _ip_kwargs(p: dict, *keys: str) -> dict:
    return {k: p[k] for k in keys if k in p}


def _llava(facts, tok, layers):
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    v, p = facts["vision"], facts["processor"]
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION, image_size=v["image_size"], patch_size=v["patch_size"]),
        text_config=_text(tok, facts, layers), image_token_id=tok.image_token_id,
        vision_feature_layer=facts["vision_feature_layer"],
        vision_feature_select_strategy=facts["vision_feature_select_strategy"],
        projector_hidden_act="gelu",
    )
    ip = CLIPImageProcessorPil(**_ip_kwargs(
        p, "size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std"))
    processor = LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=p["patch_size"],
        vision_feature_select_strategy=p["vision_feature_select_strategy"],
        num_additional_image_tokens=p["num_additional_image_tokens"],
    )
    return LlavaForConditionalGeneration(cfg), processor


def _llava_next(facts, tok, layers):
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    v, p = facts["vision"], facts["processor"]
    cls_name = "MistralConfig" if facts["text"]["model_type"] == "mistral" else "LlamaConfig"
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION, image_size=v["image_size"], patch_size=v["patch_size"]),
        text_config=_text(tok, facts, layers, cls_name), image_token_id=tok.image_token_id,
        image_grid_pinpoints=facts["image_grid_pinpoints"],
        vision_feature_layer=facts["vision_feature_layer"],
        vision_feature_select_strategy=facts["vision_feature_select_strategy"],
    )
    ip = LlavaNextImageProcessorPil(**_ip_kwargs(
        p, "size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std",
        "image_grid_pinpoints"))
    processor = LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=p["patch_size"],
        vision_feature_select_strategy=p["vision_feature_select_strategy"],
        num_additional_image_tokens=p["num_additional_image_tokens"],
    )
    return LlavaNextForConditionalGeneration(cfg), processor


def _llava_onevision(facts, tok, layers):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    v, p = facts["vision"], facts["processor"]
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION, image_size=v["image_size"], patch_size=v["patch_size"]),
        text_config=_text(tok, facts, layers, "Qwen2Config"), image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id, image_grid_pinpoints=facts["image_grid_pinpoints"],
        vision_feature_layer=facts["vision_feature_layer"],
        vision_feature_select_strategy=facts["vision_feature_select_strategy"],
        vision_aspect_ratio=facts["vision_aspect_ratio"],
    )
    ip = LlavaOnevisionImageProcessorPil(**_ip_kwargs(
        p, "size", "resample", "image_mean", "image_std", "image_grid_pinpoints"))
    with no_video_processor():
        processor = LlavaOnevisionProcessor(
            image_processor=ip, tokenizer=tok, video_processor=None,
            num_image_tokens=p["num_image_tokens"],
            vision_feature_select_strategy=p["vision_feature_select_strategy"],
            vision_aspect_ratio=p["vision_aspect_ratio"],
        )
    return LlavaOnevisionForConditionalGeneration(cfg), processor


def _qwen(facts, tok, layers):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    v, p, t = facts["vision"], facts["processor"], facts["text"]
    ids = tok.convert_tokens_to_ids
    heads = int(t["num_attention_heads"])
    text = _text(tok, facts, layers, "Qwen2Config").to_dict()
    # the real mrope sections [16, 24, 24] split head_dim / 2 = 64; scaled to HEAD_DIM / 2 = 4
    text.update(rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                 "rope_theta": 1000000.0})
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
            patch_size=v["patch_size"], spatial_merge_size=v["spatial_merge_size"],
            temporal_patch_size=v["temporal_patch_size"], out_hidden_size=heads * HEAD_DIM,
            window_size=v["window_size"], fullatt_block_indexes=[0],
        ),
        text_config=text,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    ip = Qwen2VLImageProcessorPil(**_ip_kwargs(
        p, "min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size",
        "resample", "image_mean", "image_std"))
    with no_video_processor():
        processor = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=None)
    return Qwen2_5_VLForConditionalGeneration(cfg), processor


def _internvl(facts, tok, layers):
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    v, p = facts["vision"], facts["processor"]
    cfg = InternVLConfig(
        vision_config=InternVLVisionConfig(
            **VISION, image_size=(v["image_size"],) * 2, patch_size=(v["patch_size"],) * 2),
        text_config=_text(tok, facts, layers, "Qwen2Config"),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=facts["image_seq_length"], downsample_ratio=facts["downsample_ratio"],
        vision_feature_layer=facts["vision_feature_layer"],
        vision_feature_select_strategy=facts["vision_feature_select_strategy"],
    )
    ip = GotOcr2ImageProcessorPil(**_ip_kwargs(
        p, "size", "crop_to_patches", "min_patches", "max_patches", "resample", "image_mean",
        "image_std"))
    with no_video_processor():
        processor = InternVLProcessor(
            image_processor=ip, tokenizer=tok, video_processor=None,
            image_seq_length=p["image_seq_length"],
        )
    return InternVLForConditionalGeneration(cfg), processor


def _gemma3(facts, tok, layers):
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    v, p, t = facts["vision"], facts["processor"], facts["text"]
    ids = tok.convert_tokens_to_ids
    n = int(layers or t["num_hidden_layers"])
    every = int(t["sliding_window_pattern"])  # every 6th layer is global, the others slide
    layer_types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
                   for i in range(n)]
    heads = int(t["num_attention_heads"])
    text = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=heads * HEAD_DIM, intermediate_size=heads * HEAD_DIM,
        num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=int(t["num_key_value_heads"]), head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM, sliding_window=int(t["sliding_window"]),
        layer_types=layer_types, max_position_embeddings=int(t["max_position_embeddings"]),
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg = Gemma3Config(
        vision_config=SiglipVisionConfig(**VISION, image_size=v["image_size"], patch_size=v["patch_size"]),
        text_config=text, mm_tokens_per_image=facts["mm_tokens_per_image"],
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # initialised to zeros, which would make every image token equal
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    ip = Gemma3ImageProcessorPil(**_ip_kwargs(p, "size", "resample", "image_mean", "image_std"))
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok,
                                image_seq_length=p["image_seq_length"])
    return model, processor


def _smolvlm(facts, tok, layers):
    import transformers
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    v, p = facts["vision"], facts["processor"]
    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[facts["model_type"]]
    cfg = getattr(transformers, prefix + "Config")(
        vision_config=getattr(transformers, prefix + "VisionConfig")(
            **VISION, image_size=v["image_size"], patch_size=v["patch_size"]),
        text_config=_text(tok, facts, layers), scale_factor=facts["scale_factor"],
        image_token_id=tok.image_token_id,
    )
    model = getattr(transformers, prefix + "ForConditionalGeneration")(cfg)
    ip = Idefics3ImageProcessorPil(**_ip_kwargs(
        p, "size", "max_image_size", "do_image_splitting", "resample", "image_mean", "image_std"))
    processor = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=p["image_seq_len"])
    return model, processor


def _deepseek_vl(facts, tok, layers):
    import transformers

    v, p = facts["vision"], facts["processor"]
    hybrid = facts["model_type"] == "deepseek_vl_hybrid"
    prefix = "DeepseekVLHybrid" if hybrid else "DeepseekVL"
    kwargs = dict(
        vision_config=transformers.SiglipVisionConfig(
            **VISION, image_size=v["image_size"], patch_size=v["patch_size"]).to_dict(),
        text_config=_text(tok, facts, layers).to_dict(), image_token_id=tok.image_token_id,
    )
    if hybrid:
        hv = facts["high_res_vision"]
        kwargs["high_res_vision_config"] = dict(
            model_type="sam_vision_model", hidden_size=16, output_channels=16,
            num_hidden_layers=2, num_attention_heads=2, image_size=hv["image_size"],
            patch_size=hv["patch_size"], mlp_dim=32, global_attn_indexes=[1], window_size=14,
            num_pos_feats=8,
        )
    cfg = getattr(transformers, prefix + "Config")(**kwargs)
    model = getattr(transformers, prefix + "ForConditionalGeneration")(cfg)
    module = getattr(transformers.models, "deepseek_vl_hybrid" if hybrid else "deepseek_vl")
    ip_module = getattr(module, "image_processing_pil_" + module.__name__.rsplit(".", 1)[1])
    ip = getattr(ip_module, prefix + "ImageProcessorPil")(**_ip_kwargs(
        p, "size", "high_res_size", "min_size", "resample", "image_mean", "image_std"))
    processor = getattr(transformers, prefix + "Processor")(
        image_processor=ip, tokenizer=tok, num_image_tokens=p["num_image_tokens"])
    return model, processor


_ROWCOL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
#: family -> (builder, tokenizer attributes, extra special tokens)
_FAMILIES = {
    "llava": (_llava, {"image_token": "<image>"}, ("USER", "ASSISTANT")),
    "llava_next": (_llava_next, {"image_token": "<image>"}, ("USER", "ASSISTANT")),
    "llava_onevision": (_llava_onevision, {"image_token": "<image>", "video_token": "<video>"},
                        ("<|im_start|>", "<|im_end|>")),
    "qwen2_5_vl": (_qwen, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                   ("<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>")),
    "internvl": (_internvl, {"start_image_token": "<img>", "end_image_token": "</img>",
                             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                 ("<|im_start|>", "<|im_end|>")),
    "gemma3": (_gemma3, {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                         "eoi_token": "<end_of_image>"}, ("<start_of_turn>", "<end_of_turn>")),
    "smolvlm": (_smolvlm, {"image_token": "<image>"},
                ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
                 "<|im_start|>", *_ROWCOL)),
    "deepseek_vl": (_deepseek_vl, {"image_token": "<image_placeholder>"}, ("User", "Assistant")),
}


def build_replica(facts: dict | str, *, layers: int | None = None, local: bool = False,
                  attn_implementation: str = "sdpa", seed: int = 0):
    """(model, processor) of a checkpoint's replica.

    Args:
        facts: The data file's content, or its name (``"llava-1.5-7b"``).
        layers: Decoder layers (default: the real number).
        local: Zero the vision attention outputs (tests/tiny_families.local_vision), for the
            geometry probes.
        attn_implementation: Decoder kernel.
        seed: Torch seed of the random weights.
    """
    if isinstance(facts, str):
        facts = load_facts(facts)
    builder, named, extra = _FAMILIES[facts["family"]]
    torch.manual_seed(seed)
    tok = family_tokenizer(named, extra)
    model, processor = builder(facts, tok, layers)
    return _finish(model, attn_implementation, local), processor
