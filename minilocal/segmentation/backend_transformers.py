"""SAM through transformers' ``SamModel`` + ``SamProcessor`` (``facebook/sam-vit-base`` ...),
which needs no torchvision.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import SamError
from .base import TRANSFORMERS_IDS, SamRefiner


class TransformersSamRefiner(SamRefiner):
    """:class:`SamRefiner` on transformers' ``SamModel`` + ``SamProcessor``.

    The processor resizes and pads the image; the box is scaled into SAM's frame with the
    processor's own resized size; the mask prompt goes to ``SamModel`` as ``input_masks``
    ([1, 1, m, m] logits; transformers' docstring says image-sized, but its mask embedding
    downsamples by 4 to the image-embedding grid, so m = 4 x that grid, as in SAM).

    Args:
        model: A ``transformers.SamModel``.
        processor: Its ``SamProcessor`` (its resize and pad size must be the encoder's
            image size).
        device: Move the model there (None: leave it where it is).

    Book: ``book/05_grounding.ipynb``.
    """

    backend = "transformers"

    def __init__(self, model, processor, *, device: str | torch.device | None = None):
        super().__init__()
        from transformers import SamModel

        if not isinstance(model, SamModel):
            raise SamError(
                f"expected a transformers SamModel, got {type(model).__name__}",
                "load one with SamModel.from_pretrained('facebook/sam-vit-base') or use "
                "load_sam('transformers', ...).",
            )
        ip = getattr(processor, "image_processor", None)
        size = getattr(ip, "size", None)
        longest = size.get("longest_edge") if size is not None else None
        vis = int(model.config.vision_config.image_size)
        pad = getattr(ip, "pad_size", None) or {}
        if longest != vis or pad.get("height", vis) != vis or pad.get("width", vis) != vis:
            raise SamError(
                f"the processor resizes to {longest} and pads to {dict(pad)}, but the model's "
                f"encoder takes {vis} x {vis}",
                f"load the processor saved with the model, or build SamProcessor with "
                f"size={{'longest_edge': {vis}}} and pad_size={{'height': {vis}, 'width': {vis}}}.",
            )
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.processor = processor
        self._embedding: torch.Tensor | None = None
        self._reshaped: tuple[int, int] | None = None

    @classmethod
    def from_pretrained(
        cls, model_id_or_path: str | os.PathLike, *, device: str | torch.device | None = None
    ) -> TransformersSamRefiner:
        """Load ``SamModel`` and ``SamProcessor`` from a Hub id or a local folder.

        Raises:
            SamError: The folder does not exist or holds no SAM.

        Book: ``book/05_grounding.ipynb``.
        """
        from transformers import SamModel, SamProcessor

        src = str(model_id_or_path)
        looks_local = os.path.isabs(src) or src.startswith((".", "~")) or os.path.exists(src)
        if looks_local and Path(src).expanduser().is_file():
            raise SamError(
                f"{src!r} is a file; the transformers backend loads a folder or a Hub id",
                "for an official .pth checkpoint use load_sam('segment-anything', path, "
                "model_type=...); or pass a folder saved with save_pretrained.",
            )
        if looks_local and not Path(src).expanduser().is_dir():
            raise SamError(
                f"SAM folder not found: {src!r}",
                "pass a folder saved with SamModel.save_pretrained + SamProcessor.save_pretrained, "
                f"or a Hub id such as {TRANSFORMERS_IDS['vit_b']!r}.",
            )
        if looks_local:
            src = str(Path(src).expanduser())
        try:
            model = SamModel.from_pretrained(src)
            processor = SamProcessor.from_pretrained(src)
        except OSError as exc:
            raise SamError(
                f"cannot load a transformers SAM from {src!r} ({exc})",
                f"check the id (e.g. {TRANSFORMERS_IDS['vit_b']!r}) and your connection, or pass "
                "a local folder saved with save_pretrained.",
            ) from exc
        return cls(model, processor, device=device)

    @property
    def img_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def prompt_size(self) -> int:
        return 4 * int(self.model.config.prompt_encoder_config.image_embedding_size)

    @property
    def _device_dtype(self):
        p = next(self.model.parameters())
        return p.device, p.dtype

    @torch.inference_mode()
    def _encode(self, image: np.ndarray) -> None:
        device, dtype = self._device_dtype
        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt")
        self._embedding = self.model.get_image_embeddings(inputs["pixel_values"].to(device, dtype))
        self._reshaped = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])

    @torch.inference_mode()
    def _decode(self, box, prompt, multimask):
        device, dtype = self._device_dtype
        H, W = self._hw
        new_h, new_w = self._reshaped
        scaled = box * np.array([new_w / W, new_h / H, new_w / W, new_h / H])  # SAM's frame
        kwargs = {}
        if prompt is not None:
            kwargs["input_masks"] = torch.as_tensor(prompt, device=device, dtype=dtype)[None, None]
        out = self.model(
            image_embeddings=self._embedding,
            input_boxes=torch.as_tensor(scaled, device=device, dtype=dtype)[None, None],  # [1, 1, 4]
            multimask_output=multimask,
            **kwargs,
        )
        low = out.pred_masks[0].float()  # [1, C, m, m] logits
        masks = self.processor.post_process_masks(
            [low.cpu()], [(H, W)], [self._reshaped], binarize=True
        )[0][0]  # [C, H, W]
        return masks.numpy().astype(bool), out.iou_scores[0, 0].float().cpu().numpy().astype(np.float64)
