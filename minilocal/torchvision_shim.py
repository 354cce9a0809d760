"""Import Meta's ``segment-anything`` with or without torchvision.

``segment-anything`` 1.0 imports torchvision at import time for four small functions
(``resize``, ``to_pil_image`` in its ``ResizeLongestSide``; ``box_area``, ``batched_nms`` in
its automatic mask generator). Where torchvision is not installed (it cannot be on CPU-only
torch 2.13 machines, and a mismatched one breaks ``import transformers``),
:func:`import_segment_anything` gives it exact stand-ins for those functions during its import
only, then removes them from ``sys.modules``. Where a real torchvision is importable, it is used
and nothing is patched.

This module sits at the bottom of the package (it imports only :mod:`minilocal.errors`), so
that both the SAM refiners (:mod:`minilocal.segmentation`) and the shapes world's SAM
(:mod:`minilocal.toy.sam`) can build on it; :mod:`minilocal.segmentation` re-exports its names.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import SamError

# =============================================================================== torchvision
# Stand-ins for the four torchvision functions segment-anything 1.0 imports. Each follows
# torchvision's documented behaviour on the inputs segment-anything gives it, and refuses
# (TypeError / NotImplementedError) what segment-anything never passes.


def _tv_to_pil_image(pic: Any, mode: str | None = None) -> Image.Image:
    """``torchvision.transforms.functional.to_pil_image`` for 8-bit images.

    Args:
        pic: [H, W, C] or [H, W] numpy array (C = 1, 3 or 4), or a [C, H, W] / [H, W] tensor.
            Floating-point input is scaled by 255 first, as torchvision does.
        mode: Must be None or the mode the data implies (L, RGB, RGBA).

    Returns:
        The PIL image.
    """
    if isinstance(pic, torch.Tensor):
        t = pic.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        if t.is_floating_point():
            t = t.mul(255).byte()
        arr = t.numpy()
    elif isinstance(pic, np.ndarray):
        arr = pic
        if np.issubdtype(arr.dtype, np.floating):
            arr = (arr * 255).astype(np.uint8)
    else:
        raise TypeError(f"pic should be a Tensor or ndarray, got {type(pic).__name__}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"pic should be [H, W, C] with C in 1, 3, 4; got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"minilocal's to_pil_image stand-in takes uint8 data, got {arr.dtype}")
    implied = {1: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    if mode is not None and mode != implied:
        raise NotImplementedError(f"mode={mode!r} for {implied} data (segment-anything never asks)")
    arr = np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    return Image.fromarray(arr)


def _tv_resize(
    img: Image.Image,
    size: int | list[int] | tuple[int, ...],
    interpolation: Any = None,
    max_size: int | None = None,
    antialias: bool | None = True,
) -> Image.Image:
    """``torchvision.transforms.functional.resize`` for PIL images, bilinear (its default).

    ``size=(h, w)`` resizes to exactly that; ``size=s`` (or ``[s]``) makes the SHORTER side
    s and the longer ``int(s * long / short)``. PIL's bilinear filter always antialiases,
    as torchvision's PIL path does.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"minilocal's resize stand-in takes PIL images, got {type(img).__name__}")
    if interpolation is not None or max_size is not None:
        raise NotImplementedError("interpolation / max_size (segment-anything never passes them)")
    w, h = img.size
    if isinstance(size, int) or len(size) == 1:
        s = int(size if isinstance(size, int) else size[0])
        short, long = min(w, h), max(w, h)
        new_short, new_long = s, int(s * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    elif len(size) == 2:
        new_h, new_w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"size must be an int or (h, w), got {size!r}")
    return img.resize((new_w, new_h), Image.BILINEAR)


def _tv_box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.box_area``: [N, 4] xyxy -> [N] areas (w * h, no +1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _tv_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M] (0/0 gives nan, as torchvision)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter / (_tv_box_area(a)[:, None] + _tv_box_area(b)[None, :] - inter)


def _tv_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """``torchvision.ops.batched_nms``: greedy NMS within each category of ``idxs``.

    Boxes are visited by decreasing score (ties: lower index first); a box is dropped when its
    IoU with an already kept box OF THE SAME CATEGORY is strictly greater than
    ``iou_threshold``. Returns the kept indices [K] (int64), by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].to(torch.float64)
    same = idxs[order][:, None] == idxs[order][None, :]  # [N, N]
    over = ((_tv_box_iou(b, b) > iou_threshold) & same).cpu().numpy()
    n = len(order)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def _tv_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms``: :func:`_tv_batched_nms` with one category."""
    return _tv_batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.int64), iou_threshold)


_STAND_INS: dict[str, dict[str, Any]] = {
    "torchvision": {},
    "torchvision.transforms": {},
    "torchvision.transforms.functional": {"resize": _tv_resize, "to_pil_image": _tv_to_pil_image},
    "torchvision.ops": {"nms": _tv_nms, "batched_nms": _tv_batched_nms, "box_area": _tv_box_area},
    "torchvision.ops.boxes": {
        "nms": _tv_nms, "batched_nms": _tv_batched_nms, "box_area": _tv_box_area,
        "box_iou": _tv_box_iou,
    },
}


@contextlib.contextmanager
def torchvision_stand_ins():
    """Put minimal ``torchvision`` modules into ``sys.modules`` for the duration of a block.

    Only the names segment-anything 1.0 imports exist in them. On exit, exactly the modules
    this installed are removed again (left in place they make ``import transformers`` fail:
    its availability check finds a ``torchvision`` without a ``__spec__``). Modules that were
    already in ``sys.modules`` are not touched.

    Book: ``book/05_grounding.ipynb``.
    """
    installed: dict[str, types.ModuleType] = {}
    try:
        for name, attrs in _STAND_INS.items():
            if name in sys.modules:
                continue
            mod = types.ModuleType(name, "minilocal stand-in for a few torchvision functions")
            mod.__dict__.update(attrs)
            mod.__path__ = []  # a package, so that submodules can be imported from it
            installed[name] = mod
            sys.modules[name] = mod
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, mod)
        yield
    finally:
        for name, mod in installed.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _torchvision_importable() -> bool:
    if "torchvision" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        return False


_IMPORT_MODE: dict[str, str] = {}


def import_segment_anything() -> types.ModuleType:
    """Import ``segment_anything``, with torchvision stand-ins only where torchvision is absent.

    After this call ``import segment_anything`` works anywhere in the process (the package
    keeps references to the stand-ins; ``sys.modules`` holds no fake torchvision).

    Returns:
        The ``segment_anything`` module (``SamPredictor``, ``sam_model_registry``,
        ``modeling`` ...).

    Raises:
        SamError: segment-anything is not installed, or an installed torchvision is broken.

    Book: ``book/05_grounding.ipynb``.
    """
    mod = sys.modules.get("segment_anything")
    if mod is not None and hasattr(mod, "SamPredictor"):
        return mod
    if importlib.util.find_spec("segment_anything") is None:
        raise SamError(
            "the package segment-anything is not installed",
            "pip install segment-anything (or pip install 'minilocal[sam]'); or use "
            "load_sam('transformers', 'facebook/sam-vit-base'), which needs no extra package.",
        )
    if _torchvision_importable():
        try:
            mod = importlib.import_module("segment_anything")
        except Exception as exc:  # a torchvision that does not match torch fails here
            raise SamError(
                f"segment_anything failed to import with the installed torchvision ({exc!r})",
                "install the torchvision that matches your torch (pip install torchvision "
                "with the same CUDA/CPU build), or uninstall torchvision: minilocal then "
                "gives segment-anything stand-ins for the few functions it uses.",
            ) from exc
        _IMPORT_MODE["segment_anything"] = "torchvision"
        return mod
    with torchvision_stand_ins():
        mod = importlib.import_module("segment_anything")
        importlib.import_module("segment_anything.automatic_mask_generator")
    _IMPORT_MODE["segment_anything"] = "stand-ins"
    return mod


def segment_anything_import_mode() -> str | None:
    """How :func:`import_segment_anything` imported the package.

    Returns:
        ``"torchvision"`` (the real one), ``"stand-ins"`` (minilocal's), or None when it has
        not imported it.

    Book: ``book/05_grounding.ipynb``.
    """
    return _IMPORT_MODE.get("segment_anything")
