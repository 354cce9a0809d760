"""Step 4 (RES): Segment Anything turns the box into a mask.

The localization heads give a coarse pseudo mask on the image-token grid and a box around it
(:mod:`minilocal.grounding`). For referring segmentation the slides prompt SAM with that box,
optionally together with the pseudo mask as SAM's low-resolution mask prompt, and keep either
SAM's single-mask output or the best-scoring of its three candidate masks (METHOD.md
section 5). This package does that through either implementation of SAM:

* :class:`SegmentAnythingRefiner` - Meta's package ``segment-anything`` (``SamPredictor``,
  official ``.pth`` checkpoints ``sam_vit_b_01ec64.pth`` ...).
* :class:`TransformersSamRefiner` - transformers' ``SamModel`` + ``SamProcessor``
  (``facebook/sam-vit-base`` ...), which needs no torchvision.

Both share :class:`SamRefiner`: validation, the mask-prompt geometry and the image-embedding
cache (several boxes on one image encode it once; the encoder is by far the slow part).

The package, one module per part:

=============================== =============================================================
``base``                        :class:`SamRefiner` (the interface), :class:`Refinement`,
                                SAM's frame (:func:`sam_input_shape`, :func:`sam_mask_prompt`)
                                and the official checkpoints
``backend_segment_anything``    :class:`SegmentAnythingRefiner`
``backend_transformers``        :class:`TransformersSamRefiner`
``conversion``                  :func:`segment_anything_to_transformers`
this ``__init__``               :func:`load_sam`, which picks the backend (and knows the
                                shapes world's SAM, :mod:`minilocal.toy.sam`)
=============================== =============================================================

Importing ``segment-anything`` without torchvision is :mod:`minilocal.torchvision_shim`'s job
(:func:`import_segment_anything`); its names are re-exported here.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import importlib  # noqa: F401 (part of this module's namespace before the split; tests patch it)
import os

import torch

from ..errors import SamError
from ..torchvision_shim import (  # noqa: F401 (the stand-ins are re-exported for tests)
    _tv_batched_nms,
    _tv_box_area,
    _tv_box_iou,
    _tv_nms,
    _tv_resize,
    _tv_to_pil_image,
    import_segment_anything,
    segment_anything_import_mode,
    torchvision_stand_ins,
)
from .backend_segment_anything import SegmentAnythingRefiner
from .backend_transformers import TransformersSamRefiner
from .base import (
    CHECKPOINT_URL,
    OFFICIAL_CHECKPOINTS,
    TRANSFORMERS_IDS,
    Backend,
    ModelType,
    Refinement,
    SamRefiner,
    sam_input_shape,
    sam_mask_prompt,
)
from .conversion import segment_anything_to_transformers

__all__ = [
    "CHECKPOINT_URL",
    "OFFICIAL_CHECKPOINTS",
    "TRANSFORMERS_IDS",
    "Backend",
    "ModelType",
    "Refinement",
    "SamRefiner",
    "SegmentAnythingRefiner",
    "TransformersSamRefiner",
    "import_segment_anything",
    "load_sam",
    "sam_input_shape",
    "sam_mask_prompt",
    "segment_anything_import_mode",
    "segment_anything_to_transformers",
    "torchvision_stand_ins",
]


def load_sam(
    backend: Backend,
    checkpoint_or_id: str | os.PathLike,
    model_type: str = "vit_b",
    device: str | torch.device | None = None,
) -> SamRefiner:
    """Load SAM through either backend, ready to :meth:`~SamRefiner.refine` boxes.

    Args:
        backend: ``"segment-anything"`` (Meta's package; an official ``.pth`` checkpoint) or
            ``"transformers"`` (``SamModel``; a Hub id such as ``"facebook/sam-vit-base"`` or
            a local folder).
        checkpoint_or_id: Checkpoint path (segment-anything) or model id / folder
            (transformers). With either backend, ``"shapes"`` is the small SAM shipped for
            the shapes world, and a folder written by ``python -m minilocal.toy.train_sam``
            (it holds ``sam_config.json``) is such a small SAM (:mod:`minilocal.toy.sam`).
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (segment-anything only; the
            transformers folder carries its own config).
        device: ``"cuda"``, ``"cpu"`` ...; None picks CUDA when available.

    Returns:
        A :class:`SegmentAnythingRefiner` or :class:`TransformersSamRefiner`.

    Raises:
        SamError: Unknown backend or model type, package not installed, checkpoint missing
            or of another size.

    Book: ``book/05_grounding.ipynb``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from ..toy.sam import is_shapes_sam, load_shapes_sam

    if backend in ("segment-anything", "transformers") and is_shapes_sam(checkpoint_or_id):
        sam = load_shapes_sam(checkpoint_or_id)
        if backend == "segment-anything":
            return SegmentAnythingRefiner(sam, device=device)
        return TransformersSamRefiner(*segment_anything_to_transformers(sam), device=device)
    if backend == "segment-anything":
        return SegmentAnythingRefiner.from_checkpoint(checkpoint_or_id, model_type, device=device)
    if backend == "transformers":
        return TransformersSamRefiner.from_pretrained(checkpoint_or_id, device=device)
    raise SamError(
        f"unknown SAM backend {backend!r}",
        "use backend='segment-anything' (official .pth checkpoints) or 'transformers' "
        "(Hub ids such as 'facebook/sam-vit-base').",
    )
