"""What made a result: fingerprints of the weights that caches and resumes are keyed on.

Two copies of a model can carry the same id (every model that :mod:`minilocal.toy` trains
says ``minilocal/shapes-lvlm``) and still give different attention: other weights, another
dtype, quantization. A cache keyed on the id alone would then hand back another model's
numbers without a word. :func:`model_fingerprint` and :func:`sam_fingerprint` describe a
loaded model by a SHA-256 of its parameters and buffers (names, dtypes, shapes and bytes)
plus its dtype, quantization and revision; the head search's cache and the evaluation's
resume check key on them, and refuse or separate what differs.

Hashing reads every parameter once (about 1 GB/s on one CPU core: a 7B model in float16
takes some seconds), which is small beside a search or an evaluation.

Book: ``book/06_your_model.ipynb`` (resuming).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def state_dict_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict: each entry's name, dtype, shape and bytes, in order.

    Two modules get the same digest exactly when they hold the same tensors under the same
    names (two heads swapped, a float16 copy, one changed weight: all differ).

    Args:
        module: Any ``torch.nn.Module`` (on any device; tensors are copied to the CPU one
            at a time).

    Returns:
        The hex digest.

    Book: ``book/06_your_model.ipynb``.
    """
    h = hashlib.sha256()
    for name, t in module.state_dict(keep_vars=False).items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}:{type(t).__name__}:{t!r}\n".encode())
            continue
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.device.type == "meta":
            h.update(b"meta")
            continue
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _quantization(config) -> Any:
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    if hasattr(q, "to_dict"):
        q = q.to_dict()
    if isinstance(q, dict):
        keep = ("quant_method", "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type",
                "bnb_4bit_compute_dtype")
        return {k: str(q[k]) for k in keep if k in q}
    return str(q)


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What decides a model's attention besides the prompt: weights, dtype, quantization.

    Args:
        model: A loaded (transformers) model.

    Returns:
        ``{"weights_sha256", "dtype", "quantization", "revision"}`` (revision: the hub
        commit transformers resolved, or None for a local folder).

    Book: ``book/06_your_model.ipynb``.
    """
    config = getattr(model, "config", None)
    dtype = getattr(model, "dtype", None)
    return {
        "weights_sha256": state_dict_digest(model),
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "quantization": _quantization(config),
        "revision": getattr(config, "_commit_hash", None),
    }


def sam_fingerprint(refiner) -> dict[str, Any] | None:
    """The SAM behind a refiner: its class and the SHA-256 of its weights (None: no SAM).

    Args:
        refiner: A :class:`minilocal.segmentation.SamRefiner` (its ``model`` attribute is
            hashed), or None.

    Book: ``book/05_grounding.ipynb``.
    """
    if refiner is None:
        return None
    model = getattr(refiner, "model", None)
    digest = state_dict_digest(model) if isinstance(model, torch.nn.Module) else None
    dtype = None
    if isinstance(model, torch.nn.Module):
        first = next(iter(model.parameters()), None)
        dtype = None if first is None else str(first.dtype).replace("torch.", "")
    return {"class": type(refiner).__name__, "weights_sha256": digest, "dtype": dtype}
