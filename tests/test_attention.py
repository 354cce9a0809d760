"""Step 1: the recorded last-token attention equals the eager reference."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava

from minilocal.adapters import LlavaAdapter, get_adapter
from minilocal.attention import last_row_softmax, last_token_attention
from minilocal.errors import AttentionCaptureError


def _image(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_capture_matches_eager_reference(kv_heads, impl):
    model, processor = tiny_llava(kv_heads=kv_heads, attn_implementation=impl)
    adapter = get_adapter(model, processor)
    cap, prep = adapter.attention(_image(), "the red circle", method="capture")
    ref, _ = adapter.attention(_image(), "the red circle", method="eager")
    L, H = adapter.num_layers, adapter.num_heads
    assert cap.shape == ref.shape == (L, H, *prep.grid)
    assert np.abs(cap - ref).max() < 1e-5
    s_img = cap.sum((-1, -2))
    assert ((s_img > 0) & (s_img <= 1 + 1e-6)).all()
    # the implementation is restored afterwards
    assert adapter.decoder().config._attn_implementation == impl


def test_full_row_sums_to_one(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    prep = adapter.prepare(_image(), "the dog")
    row = last_token_attention(model, prep.inputs, None, adapter.decoder())  # [1, L, H, T]
    assert row.shape[-1] == prep.inputs["input_ids"].shape[-1]
    torch.testing.assert_close(row.sum(-1), torch.ones(row.shape[:-1]))


def test_batch_with_left_padding_matches_single_rows(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    a = adapter.prepare(_image(seed=1), "the dog")
    b = adapter.prepare(_image(seed=2), "the small red circle on the left")
    singles = [
        last_token_attention(model, p.inputs, p.positions, adapter.decoder())[0] for p in (a, b)
    ]
    ids_a, ids_b = a.inputs["input_ids"][0], b.inputs["input_ids"][0]
    pad = ids_b.numel() - ids_a.numel()
    ids = torch.stack([torch.cat([torch.zeros(pad, dtype=torch.long), ids_a]), ids_b])
    mask = torch.stack([torch.cat([torch.zeros(pad), torch.ones(ids_a.numel())]),
                        torch.ones(ids_b.numel())]).long()
    pv = torch.cat([a.inputs["pixel_values"], b.inputs["pixel_values"]])
    positions = torch.stack([a.positions + pad, b.positions])
    batch = last_token_attention(
        model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pv}, positions,
        adapter.decoder(),
    )
    # left padding shifts RoPE positions unless position_ids are given; compare with eager
    ref = last_token_attention(
        model, {"input_ids": ids, "attention_mask": mask, "pixel_values": pv}, positions,
        adapter.decoder(), method="eager",
    )
    assert (batch - ref).abs().max() < 1e-5
    assert (batch[1] - singles[1]).abs().max() < 1e-5  # the unpadded row is unchanged


def test_right_padding_is_refused(tiny_llava_pair):
    model, processor = tiny_llava_pair
    adapter = get_adapter(model, processor)
    p = adapter.prepare(_image(), "the dog")
    mask = torch.ones_like(p.inputs["input_ids"])
    mask[0, -1] = 0
    with pytest.raises(AttentionCaptureError, match="padding_side = 'left'"):
        last_token_attention(model, {**p.inputs, "attention_mask": mask}, p.positions,
                             adapter.decoder())


def test_last_row_softmax_masks():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    base = last_row_softmax(q, k, None)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    keep[0, :, :, 0] = False
    masked = last_row_softmax(q, k, keep)
    assert masked[0, :, 0].abs().max() == 0
    torch.testing.assert_close(masked[1], base[1])
    additive = torch.zeros(2, 1, 5, 5).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(last_row_softmax(q, k, additive), masked)
    torch.testing.assert_close(last_row_softmax(q, k, keep[:, 0, -1].long()), masked)


def test_full_strategy_skips_cls_token():
    model, processor = tiny_llava(strategy="full")
    adapter = LlavaAdapter(model, processor)
    cap, prep = adapter.attention(_image(), "the cat")
    ref, _ = adapter.attention(_image(), "the cat", method="eager")
    assert prep.positions.numel() == 16 and np.abs(cap - ref).max() < 1e-5


def _shard_last_layer_to_meta(model):
    """Put the decoder's last layer, final norm and LM head on a second device ("meta"), with
    a pre-hook that moves their inputs there, as accelerate's device_map hooks do."""

    def to_meta(x):
        if isinstance(x, torch.Tensor):
            return x.to("meta")
        if isinstance(x, tuple):
            return tuple(to_meta(v) for v in x)
        return x

    def hook(module, args, kwargs):
        return to_meta(args), {k: to_meta(v) for k, v in kwargs.items()}

    lm = model.model.language_model
    handles = []
    for module in (lm.layers[-1], lm.norm, model.lm_head):
        module.to("meta")
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@pytest.mark.parametrize("method", ["capture", "eager"])
def test_layers_on_two_devices_are_gathered_on_one(method):
    """A model sharded over two devices (device_map): each layer's row is computed on its
    layer's device; the result is stacked on the positions' device (issue 17)."""
    model, processor = tiny_llava(layers=3, attn_implementation="sdpa")
    adapter = get_adapter(model, processor)
    prep = adapter.prepare(_image(), "the dog")
    _shard_last_layer_to_meta(model)
    positions = prep.positions.to("meta")
    attn = last_token_attention(model, prep.inputs, positions, adapter.decoder(), method=method)
    assert attn.device.type == "meta"
    assert tuple(attn.shape) == (1, 3, adapter.num_heads, prep.positions.numel())
