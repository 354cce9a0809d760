"""A SAM built with ``segment-anything``'s modules, converted to transformers' ``SamModel``.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

from typing import Any

import torch


def segment_anything_to_transformers(sam) -> tuple[Any, Any]:
    """The same weights as a transformers ``SamModel`` + ``SamProcessor``.

    Reads every size from the modules of a ``segment_anything.modeling.Sam`` (official or
    custom: image size, patch, widths, depths, windows, global-attention blocks, layer-norm
    eps), builds the matching ``SamConfig``, renames the state dict and loads it strictly.
    The processor resizes to the encoder's ``img_size`` with SAM's pixel mean and std.
    With it a SAM trained in the segment-anything architecture runs through either backend.

    Args:
        sam: A ``segment_anything.modeling.Sam``.

    Returns:
        (SamModel in eval mode, SamProcessor).

    Book: ``book/05_grounding.ipynb``.
    """
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    enc, pe, md = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
    blk = enc.blocks[0]
    patch = int(enc.patch_embed.proj.kernel_size[0])
    windows = [int(b.window_size) for b in enc.blocks]
    two_way = md.transformer.layers[0]
    vision = SamVisionConfig(
        hidden_size=int(enc.patch_embed.proj.out_channels),
        output_channels=int(enc.neck[0].out_channels),
        num_hidden_layers=len(enc.blocks),
        num_attention_heads=int(blk.attn.num_heads),
        image_size=int(enc.img_size),
        patch_size=patch,
        layer_norm_eps=float(blk.norm1.eps),
        qkv_bias=blk.attn.qkv.bias is not None,
        mlp_dim=int(blk.mlp.lin1.out_features),
        use_abs_pos=enc.pos_embed is not None,
        use_rel_pos=bool(blk.attn.use_rel_pos),
        window_size=max(windows),
        global_attn_indexes=[i for i, w in enumerate(windows) if w == 0],
        num_pos_feats=int(pe.pe_layer.positional_encoding_gaussian_matrix.shape[1]),
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=int(pe.embed_dim),
        image_size=int(enc.img_size),
        patch_size=patch,
        mask_input_channels=int(pe.mask_downscaling[3].out_channels),
        num_point_embeddings=int(pe.num_point_embeddings),
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=int(md.transformer_dim),
        mlp_dim=int(two_way.mlp.lin1.out_features),
        num_hidden_layers=int(md.transformer.depth),
        num_attention_heads=int(md.transformer.num_heads),
        attention_downsample_rate=int(
            two_way.cross_attn_token_to_image.embedding_dim
            // two_way.cross_attn_token_to_image.internal_dim
        ),
        num_multimask_outputs=int(md.num_multimask_outputs),
        iou_head_depth=int(md.iou_prediction_head.num_layers),
        iou_head_hidden_dim=int(md.iou_prediction_head.layers[0].out_features),
        layer_norm_eps=float(two_way.norm1.eps),
    )
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                               mask_decoder_config=decoder))
    model.load_state_dict(_rename_sam_state_dict(sam.state_dict()), strict=True)
    model.eval()
    m = 4 * (int(enc.img_size) // patch)
    ip = SamImageProcessorPil(
        size={"longest_edge": int(enc.img_size)},
        pad_size={"height": int(enc.img_size), "width": int(enc.img_size)},
        mask_size={"longest_edge": m},
        mask_pad_size={"height": m, "width": m},
        image_mean=(sam.pixel_mean.flatten() / 255).tolist(),
        image_std=(sam.pixel_std.flatten() / 255).tolist(),
    )
    return model, SamProcessor(image_processor=ip)


# segment-anything name piece -> transformers name piece, applied in order to every key.
_RENAMES: tuple[tuple[str, str], ...] = (
    ("image_encoder.", "vision_encoder."),
    ("patch_embed.proj.", "patch_embed.projection."),
    (".blocks.", ".layers."),
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".norm3.", ".layer_norm3."),
    (".norm4.", ".layer_norm4."),
    ("norm_final_attn.", "layer_norm_final_attn."),
    ("neck.0.", "neck.conv1."),
    ("neck.1.", "neck.layer_norm1."),
    ("neck.2.", "neck.conv2."),
    ("neck.3.", "neck.layer_norm2."),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
    ("point_embeddings.", "point_embed."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
)


def _rename_sam_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment-anything ``Sam`` state dict -> transformers ``SamModel`` state dict."""
    # depth of each SAM MLP head, to know which of its layers is the last
    depth: dict[str, int] = {}
    for k in state:
        if "iou_prediction_head.layers." in k or "output_hypernetworks_mlps." in k:
            prefix, _, rest = k.partition(".layers.")
            depth[prefix] = max(depth.get(prefix, 0), int(rest.split(".")[0]) + 1)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in ("pixel_mean", "pixel_std"):
            continue
        new = k
        if ".layers." in k and k.partition(".layers.")[0] in depth:
            prefix, _, rest = k.partition(".layers.")
            n, _, tail = rest.partition(".")
            n, last = int(n), depth[prefix] - 1
            piece = "proj_in" if n == 0 else "proj_out" if n == last else f"layers.{n - 1}"
            new = f"{prefix}.{piece}.{tail}"
        for a, b in _RENAMES:
            new = new.replace(a, b)
        out[new] = v
    out["shared_image_embedding.positional_embedding"] = out[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]
    return out
