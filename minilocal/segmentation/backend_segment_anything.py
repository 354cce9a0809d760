"""SAM through Meta's package ``segment-anything`` (``SamPredictor``, official ``.pth``
checkpoints such as ``sam_vit_b_01ec64.pth``).

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import SamError
from ..torchvision_shim import import_segment_anything
from .base import CHECKPOINT_URL, OFFICIAL_CHECKPOINTS, TRANSFORMERS_IDS, SamRefiner


class SegmentAnythingRefiner(SamRefiner):
    """:class:`SamRefiner` on Meta's ``segment-anything`` package (``SamPredictor``).

    Args:
        sam: A built ``segment_anything.modeling.Sam`` (or a ``SamPredictor``).
        device: Move the model there (None: leave it where it is).

    Book: ``book/05_grounding.ipynb``.
    """

    backend = "segment-anything"

    def __init__(self, sam, *, device: str | torch.device | None = None):
        super().__init__()
        sa = import_segment_anything()
        if isinstance(sam, sa.SamPredictor):
            predictor = sam
        elif isinstance(sam, sa.modeling.Sam):
            predictor = sa.SamPredictor(sam)
        else:
            raise SamError(
                f"expected a segment_anything Sam model, got {type(sam).__name__}",
                "build one with segment_anything.sam_model_registry['vit_b'](checkpoint=...) "
                "or use load_sam('segment-anything', path).",
            )
        if device is not None:
            predictor.model.to(device)
        predictor.model.eval()
        self.predictor = predictor
        self.model = predictor.model

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        model_type: str = "vit_b",
        *,
        device: str | torch.device | None = None,
    ) -> SegmentAnythingRefiner:
        """Build ``model_type`` and load an official checkpoint into it (map_location CPU).

        Raises:
            SamError: Unknown model type, missing file, or a checkpoint of another size.

        Book: ``book/05_grounding.ipynb``.
        """
        sa = import_segment_anything()
        if model_type not in OFFICIAL_CHECKPOINTS:
            raise SamError(
                f"unknown SAM model_type {model_type!r}",
                f"use one of {sorted(OFFICIAL_CHECKPOINTS)} (vit_b is the smallest: "
                f"{OFFICIAL_CHECKPOINTS['vit_b'][0]}).",
            )
        name, width = OFFICIAL_CHECKPOINTS[model_type]
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise SamError(
                f"SAM checkpoint not found: {str(path)!r}",
                f"download the official {model_type} checkpoint {name} from "
                f"{CHECKPOINT_URL}{name} and pass its path; or use "
                f"load_sam('transformers', '{TRANSFORMERS_IDS[model_type]}').",
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SamError(
                f"cannot read {str(path)!r} as a PyTorch checkpoint ({exc})",
                f"download it again ({CHECKPOINT_URL}{name}); the file may be truncated.",
            ) from exc
        key = "image_encoder.patch_embed.proj.weight"
        if not isinstance(state, dict) or key not in state:
            raise SamError(
                f"{str(path)!r} is not a segment-anything state dict (no {key!r})",
                f"pass an official SAM checkpoint such as {name}.",
            )
        found = int(state[key].shape[0])
        if found != width:
            actual = [t for t, (_, w) in OFFICIAL_CHECKPOINTS.items() if w == found]
            raise SamError(
                f"{str(path)!r} holds a ViT of width {found}, but model_type={model_type!r} "
                f"has width {width}",
                f"pass model_type={actual[0]!r}." if actual
                else "this is not an official SAM; build the model yourself and wrap it: "
                "SegmentAnythingRefiner(sam).",
            )
        sam = sa.sam_model_registry[model_type]()
        sam.load_state_dict(state)
        return cls(sam, device=device)

    @property
    def img_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def prompt_size(self) -> int:
        return int(self.model.prompt_encoder.mask_input_size[0])

    def _encode(self, image: np.ndarray) -> None:
        self.predictor.set_image(image, image_format="RGB")

    def _decode(self, box, prompt, multimask):
        masks, scores, _ = self.predictor.predict(
            box=box.astype(np.float32),
            mask_input=None if prompt is None else prompt[None],  # [1, m, m]
            multimask_output=multimask,
        )
        return masks.astype(bool), scores.astype(np.float64)  # [C, H, W], [C]
