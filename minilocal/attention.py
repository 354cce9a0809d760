"""Step 1 of the slides: the attention of the last text token over the image tokens.

For decoder layer l and head h the slides define

    attn^{l,h} = softmax(q_last K^T / sqrt(d_h))   over ALL keys (system text, image, expr)

where q_last is the query of the last prompt position (post rotary embedding) and K holds
the keys of every position (post rotary, with grouped-query heads expanded). Only the
entries at image-token positions are kept; reshaped to the image-token grid they are the
per-head maps that the rest of the method works on.

Two ways to get them, which must agree (float32, max abs diff < 1e-5; tested):

* ``method="capture"`` (default): a thin attention function is registered with
  transformers' ``AttentionInterface``. It receives every decoder layer's query and keys,
  computes the softmax of the LAST query row only (a [heads, T] row, not [T, T]) and then
  calls the model's own kernel (SDPA, eager, flash...) unchanged. One prefill forward,
  almost no extra time or memory.
* ``method="eager"``: the reference. ``output_attentions=True`` on the eager path, which
  materialises every layer's full [heads, T, T] map and keeps its last row.

Book: ``book/01_attention.ipynb``.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .errors import AttentionCaptureError, InputError

Method = Literal["capture", "eager"]
_SUFFIX = "+minilocal"


@dataclass
class _Recording:
    """What one forward pass records: per layer, the last query row at chosen keys."""

    positions: torch.Tensor | None  # [B, n] key positions to keep, or None for all keys
    device: torch.device | None = None  # where rows are stored (None: where computed)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, H, n]
    calls: int = 0


_ACTIVE: list[_Recording] = []


def last_row_softmax(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Softmax attention of the last query position over all keys, in float32.

    Args:
        query: [B, H, Q, D] queries after rotary embedding.
        key: [B, KVH, K, D] keys after rotary embedding (KVH divides H: grouped-query
            attention is expanded by grouping the queries, never by copying the keys).
        attention_mask: None (causal prefill: the last query sees every key), a boolean
            [B|1, 1|H, Q, K] mask (True = attend), an additive float mask of that shape,
            or a [B, K] padding mask (1 = keep), as flash-attention paths pass it.
        scaling: Multiplier of q.k (default 1 / sqrt(D)).
        softcap: Gemma-2-style logit soft-capping, if the model uses it.
        sliding_window: The layer's window, as the model passes it to its kernel. A 4-D mask
            already holds the window (SDPA, eager); without one (flash-attention gets a
            [B, K] padding mask or None and applies the window itself) the last query sees
            only the last ``sliding_window`` keys, as flash-attention's
            ``window_size=(w - 1, w - 1)`` and transformers' sliding mask
            (``kv_idx > q_idx - w``) both say.

    Returns:
        [B, H, K] float32 attention weights of the last query (each row sums to 1).
    """
    B, H, _, D = query.shape
    kvh, K = key.shape[1], key.shape[2]
    if H % kvh:
        raise AttentionCaptureError(
            f"{H} query heads cannot share {kvh} key/value heads",
            "this attention layout is not grouped-query attention; use method='eager'.",
        )
    scaling = D**-0.5 if scaling is None else scaling
    q = query[:, :, -1, :].float().reshape(B, kvh, H // kvh, D)  # [B, KVH, G, D]
    scores = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # [B, KVH, G, K]
    scores = scores.reshape(B, H, K)  # head h uses key head h // G, as repeat_kv does
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        m = attention_mask
        if m.dim() == 4:
            m = m[:, :, -1, :K]  # [B|1, 1|H, K]
        elif m.dim() == 2:
            m = m[:, None, :K].bool()  # [B, 1, K] padding mask
        else:
            raise AttentionCaptureError(
                f"unexpected attention mask of shape {tuple(attention_mask.shape)}",
                "use method='eager' for this model and report the model id to minilocal.",
            )
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.float()
    if sliding_window is not None and (attention_mask is None or attention_mask.dim() != 4):
        if K > int(sliding_window):
            scores[..., : K - int(sliding_window)] = float("-inf")
    return scores.softmax(dim=-1)  # [B, H, K]


@contextlib.contextmanager
def _quiet_transformers():
    """Hold transformers' warnings back (errors still show) for the duration."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _model_eager_forward(module: torch.nn.Module):
    """The eager attention function of the module's own modeling file."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise AttentionCaptureError(
            f"{type(module).__name__} has no eager_attention_forward in its modeling file",
            "load the model with attn_implementation='sdpa' or use method='eager'.",
        )
    return fn


def _make_capture_forward(base: str):
    """An attention function that records the last row, then runs ``base`` unchanged."""

    def capture_forward(module, query, key, value, attention_mask, *args, **kwargs):
        if _ACTIVE:
            rec = _ACTIVE[-1]
            probs = last_row_softmax(
                query, key, attention_mask, kwargs.get("scaling"), kwargs.get("softcap"),
                kwargs.get("sliding_window"),
            )  # [B, H, K]
            if rec.device is not None:  # a sharded model: each layer on its own device
                probs = probs.to(rec.device)
            if rec.positions is not None:
                idx = rec.positions[:, None, :].expand(-1, probs.shape[1], -1)  # [B, H, n]
                probs = torch.gather(probs, 2, idx.to(probs.device))
            layer = getattr(module, "layer_idx", None)
            rec.rows[rec.calls if layer is None else int(layer)] = probs
            rec.calls += 1
        fn = (
            _model_eager_forward(module)
            if base == "eager"
            else ALL_ATTENTION_FUNCTIONS.get_interface(base, _model_eager_forward(module))
        )
        return fn(module, query, key, value, attention_mask, *args, **kwargs)

    capture_forward.__name__ = f"capture_forward[{base}]"
    return capture_forward


def _capture_name(base: str) -> str:
    """Register (once) and return the capturing twin of attention implementation ``base``."""
    name = base + _SUFFIX
    if name not in AttentionInterface._global_mapping:
        mask_fn = AttentionMaskInterface._global_mapping.get(base)
        if mask_fn is None:
            raise AttentionCaptureError(
                f"attention implementation {base!r} has no mask function in transformers",
                "load the model with attn_implementation='sdpa' (or 'eager').",
            )
        AttentionInterface.register(name, _make_capture_forward(base))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask_fn)
    return name


@contextlib.contextmanager
def _attn_implementation(decoder: PreTrainedModel, name: str):
    """Temporarily switch the decoder (only) to attention implementation ``name``."""
    old = decoder.config._attn_implementation
    decoder.set_attn_implementation(name)
    try:
        yield
    finally:
        decoder.set_attn_implementation(old)


def _check_rows(rec: _Recording, num_layers: int) -> torch.Tensor:
    if sorted(rec.rows) != list(range(num_layers)):
        raise AttentionCaptureError(
            f"recorded attention for layers {sorted(rec.rows)} of a {num_layers}-layer decoder",
            "the model's attention does not go through transformers' AttentionInterface "
            "(custom or remote code?). Use method='eager' with attn_implementation='eager'.",
        )
    return torch.stack([rec.rows[i] for i in range(num_layers)], dim=1)  # [B, L, H, n]


def last_token_attention(
    model: PreTrainedModel,
    inputs: dict,
    positions: torch.Tensor | None,
    decoder: PreTrainedModel,
    *,
    method: Method = "capture",
    forward_kwargs: dict | None = None,
) -> torch.Tensor:
    """Attention of the last prompt position over the image tokens, every layer and head.

    One prefill forward; no generation. The prompt must end at the last position of every
    row (no right padding).

    Args:
        model: The vision-language model.
        inputs: Processor output (input_ids, pixel_values, attention_mask, ...).
        positions: [B, n] (or [n]) positions of the image tokens in the prompt, in grid
            order (row-major). None keeps the whole row over all T keys.
        decoder: The language-model module whose attention is recorded (an adapter's
            ``decoder(model)``).
        method: "capture" (recorded beside the model's own kernel) or "eager" (reference:
            ``output_attentions=True`` on the eager path).
        forward_kwargs: Extra keyword arguments for ``model(...)``.

    Returns:
        attn: [B, L, H, n] float32, post-softmax weights of the last query (``attn`` in the
        glossary); summing over n gives S_img.

    Book: ``book/01_attention.ipynb``.
    """
    if positions is not None and positions.dim() == 1:
        positions = positions[None]  # [1, n]
    mask2d = inputs.get("attention_mask")
    if mask2d is not None and mask2d.dim() == 2 and not bool(mask2d[:, -1].all()):
        raise AttentionCaptureError(
            "a row of the batch is right-padded: its last position is padding, not its prompt",
            "pad on the left (processor.tokenizer.padding_side = 'left') or use batch size 1.",
        )
    num_layers = decoder.config.num_hidden_layers
    kwargs = {"use_cache": False, **(forward_kwargs or {})}
    base = decoder.config._attn_implementation
    # One device for every layer's row (a model sharded with device_map keeps each layer
    # on its own GPU): the positions' device, else the input ids'.
    ids = inputs.get("input_ids")
    device = positions.device if positions is not None else getattr(ids, "device", None)
    if method == "capture":
        rec = _Recording(positions=positions, device=device)
        _ACTIVE.append(rec)
        try:
            with torch.no_grad(), _attn_implementation(decoder, _capture_name(base)):
                model(**inputs, **kwargs)
        finally:
            _ACTIVE.remove(rec)
        return _check_rows(rec, num_layers)
    if method == "eager":
        # Only the decoder runs eager; the outer model's config still says "sdpa", and
        # transformers would warn that sdpa returns no attentions (they are returned).
        with torch.no_grad(), _attn_implementation(decoder, "eager"), _quiet_transformers():
            out = model(**inputs, output_attentions=True, **kwargs)
        attentions = getattr(out, "attentions", None)
        if not attentions or len(attentions) != num_layers:
            raise AttentionCaptureError(
                "the model returned no decoder attentions with output_attentions=True",
                "load the model with attn_implementation='eager'.",
            )
        rows = torch.stack(
            [a[:, :, -1, :].float().to(device or a.device) for a in attentions], dim=1
        )  # [B, L, H, T]
        if positions is not None:
            idx = positions[:, None, None, :].expand(-1, rows.shape[1], rows.shape[2], -1)
            rows = torch.gather(rows, 3, idx.to(rows.device))  # [B, L, H, n]
        return rows
    raise InputError(
        f"method must be 'capture' or 'eager', got {method!r}",
        "use method='capture' (fast, default) or method='eager' (reference).",
    )
