"""InternVL 2.5 / 3 (transformers-native ``InternVLForConditionalGeneration``, "-hf" hub ids).

Image (GotOcr2 image processor): with ``crop_to_patches`` the image is stretched onto a
canvas of cols x rows tiles of 448 px (the tiling whose aspect ratio is closest to the
image's, between min_patches and max_patches tiles), cut into those tiles row by row, and a
THUMBNAIL (the whole image stretched to 448 x 448) is appended when there is more than one
tile. Each 448 px view gives 32 x 32 patches, which a pixel shuffle (downsample_ratio 0.5)
turns into g x g = 16 x 16 tokens, row-major. In the prompt::

    <img> tile 1 (g*g) ... tile rows*cols (g*g) thumbnail (g*g) </img>

``grid_source`` picks the grid:

* ``"thumbnail"`` (default): the g x g grid of the thumbnail (a stretch of the whole image);
* ``"tiles"``: the tiles' grids joined into one (rows*g) x (cols*g) grid (not square in
  general), also a stretch of the whole image, with finer cells.

With a single tile (small images, or ``crop_to_patches`` off) both are that tile's grid.

Prompt: InternVL's chat format (Qwen-style markers) up to the expression; ``{image}`` is the
processor's placeholder, expanded by the processor.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from PIL import Image
from transformers import PreTrainedModel

from ..errors import ImageTokensNotFoundError, InputError
from ..geometry import Geometry
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import resolve_template

GridSource = Literal["thumbnail", "tiles"]

INTERNVL_TEMPLATE = "<|im_start|>user\n{image}\n{expr}"


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@register_adapter
class InternVLAdapter(Adapter):
    """Adapter for ``InternVLForConditionalGeneration`` (model type ``internvl``).

    Args:
        model: An InternVLForConditionalGeneration.
        processor: Its InternVLProcessor.
        grid_source: "thumbnail" (default) or "tiles".
        template: Prompt template with ``{image}`` and ``{expr}``.
    """

    family = "internvl"
    model_types = ("internvl",)

    def __init__(
        self,
        model: PreTrainedModel,
        processor,
        grid_source: GridSource = "thumbnail",
        template: str | None = None,
    ):
        super().__init__(model, processor)
        if grid_source not in ("thumbnail", "tiles"):
            raise InputError(
                f"grid_source must be 'thumbnail' or 'tiles', got {grid_source!r}",
                "pick one of the grids this family offers (see the adapter's docstring).",
            )
        self.grid_source = grid_source
        self.template = resolve_template(model, template, INTERNVL_TEMPLATE)

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.image_token, expr=expr)

    def images_kwargs(self) -> dict:
        """The image settings the processor really uses: its own ``images_kwargs`` merged
        over the image processor's attributes (``InternVLProcessor`` passes
        ``crop_to_patches=True`` itself, whatever the image processor says)."""
        ip = self.processor.image_processor
        merged = {
            key: _get(ip, key) for key in ("crop_to_patches", "min_patches", "max_patches", "size")
        }
        merge = getattr(self.processor, "_merge_kwargs", None)
        if merge is not None:
            tok = getattr(self.processor, "tokenizer", None)
            got = merge(tokenizer_init_kwargs=getattr(tok, "init_kwargs", {}))["images_kwargs"]
            merged.update({k: v for k, v in got.items() if k in merged and v is not None})
        return merged

    def tiling(self, image_size: tuple[int, int]) -> tuple[int, int, bool]:
        """(rows, cols, thumbnail) of the processor's tiling for an image of (W, H), with the
        settings the processor really applies (:meth:`images_kwargs`)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
            get_optimal_tiled_canvas,
        )

        W, H = image_size
        kw = self.images_kwargs()
        max_patches = int(kw["max_patches"] if kw["max_patches"] is not None else 12)
        if not kw["crop_to_patches"] or max_patches <= 1:
            return 1, 1, False
        size = kw["size"]
        cols, rows = get_optimal_tiled_canvas(
            (H, W), (int(_get(size, "height")), int(_get(size, "width"))),
            int(kw["min_patches"] if kw["min_patches"] is not None else 1), max_patches,
        )
        return rows, cols, rows * cols > 1

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        seq = int(self.model.config.image_seq_length)
        g = math.isqrt(seq)
        rows, cols, thumbnail = self.tiling(image.size)
        views = rows * cols + int(thumbnail)
        given = inputs.get("pixel_values")
        if given is not None and int(given.shape[0]) != views:
            raise ImageTokensNotFoundError(
                f"the processor cut the image into {int(given.shape[0])} views, but the "
                f"adapter's tiling is {rows}x{cols} tiles{' + thumbnail' if thumbnail else ''}"
                f" = {views}",
                "use the processor saved with the model, unchanged (its crop_to_patches, "
                "min_patches and max_patches decide the tiling), and report the model id.",
            )
        every = (ids[0] == self.model.config.image_token_id).nonzero().reshape(-1)  # [N]
        if every.numel() != views * seq or g * g != seq:
            raise ImageTokensNotFoundError(
                f"{every.numel()} image tokens in the prompt, but {rows}x{cols} tiles"
                f"{' + thumbnail' if thumbnail else ''} of {seq} tokens need {views * seq}",
                "use the processor saved with the model (same max_patches, image size and "
                "image_seq_length as the model config).",
            )
        if self.grid_source == "tiles" or views == 1:
            tiles = every[: rows * cols * seq].reshape(rows, cols, g, g)
            positions = tiles.permute(0, 2, 1, 3).reshape(-1)  # [(rows g) (cols g)] row-major
            grid = (rows * g, cols * g)
        else:
            positions = every[rows * cols * seq :]  # the thumbnail, last
            grid = (g, g)
        return Prepared(
            inputs=inputs, positions=positions.to(torch.long), grid=grid,
            geometry=Geometry.resize(image.size, grid), prompt=prompt, expr=expr,
        )
