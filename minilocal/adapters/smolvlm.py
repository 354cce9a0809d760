"""SmolVLM / SmolVLM2 / Idefics3 (transformers-native): image splitting + a global image.

Image (Idefics3 image processor): the image is resized so its long side is
``size["longest_edge"]``, then stretched to whole multiples of the encoder's input
(``max_image_size``, 512 px in SmolVLM) and, when that is more than one tile, cut into
rows x cols tiles, and a GLOBAL image (the whole image stretched to 512 x 512) is appended.
Each 512 px view gives 32 x 32 patches, which a pixel shuffle (``scale_factor`` 4) turns
into g x g = 8 x 8 tokens (``image_seq_len`` = 64), row-major. In the prompt::

    <fake_token_around_image><row_1_col_1><image>*64 ... <fake_token_around_image>
    <global-img><image>*64<fake_token_around_image>

``grid_source``:

* ``"global"`` (default): the g x g grid of the global image, a stretch of the whole image;
* ``"tiles"``: the tiles' grids joined into one (rows*g) x (cols*g) grid over the stretched
  image (finer, not square in general).

Without splitting (a small image, or ``do_image_splitting`` off) the single view is the
global image and both choices give it.

Prompt: SmolVLM's chat format up to the expression::

    <|im_start|>User:<image>the man on the left.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from PIL import Image
from transformers import PreTrainedModel

from ..errors import ImageTokensNotFoundError, InputError
from ..geometry import Geometry
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import resolve_template

GridSource = Literal["global", "tiles"]

_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")

SMOLVLM_TEMPLATE = "<|im_start|>User:{image}{expr}"


@register_adapter
class SmolVLMAdapter(Adapter):
    """Adapter for SmolVLM (model types ``idefics3`` and ``smolvlm``).

    Args:
        model: An Idefics3ForConditionalGeneration or SmolVLMForConditionalGeneration.
        processor: Its processor.
        grid_source: "global" (default) or "tiles".
        template: Prompt template with ``{image}`` and ``{expr}``.
    """

    family = "smolvlm"
    model_types = ("idefics3", "smolvlm")

    def __init__(
        self,
        model: PreTrainedModel,
        processor,
        grid_source: GridSource = "global",
        template: str | None = None,
    ):
        super().__init__(model, processor)
        if grid_source not in ("global", "tiles"):
            raise InputError(
                f"grid_source must be 'global' or 'tiles', got {grid_source!r}",
                "pick one of the grids this family offers (see the adapter's docstring).",
            )
        self.grid_source = grid_source
        self.template = resolve_template(model, template, SMOLVLM_TEMPLATE)

    def decoder(self) -> PreTrainedModel:
        return self.model.model.text_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.image_token, expr=expr)

    def tiling(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of tiles the image processor predicts for an image of (W, H); (0, 0)
        when it is not split. :meth:`prepare` does not use it: it reads the split from the
        processor's own ``<row_r_col_c>`` markers in the prompt."""
        W, H = image_size
        _, rows, cols = self.processor.image_processor.get_number_of_image_patches(H, W, {})
        return int(rows), int(cols)

    def tiles_in_prompt(self, input_ids: torch.Tensor, seq: int) -> dict[tuple[int, int], int]:
        """Where each tile's tokens start, read from the processor's own output.

        The processor writes ``<row_r_col_c>`` (1-based) before the ``seq`` image tokens of
        tile (r, c): the rows and columns of its split are those markers, whatever the
        adapter would compute.

        Args:
            input_ids: [T] tokenized prompt.
            seq: Image tokens per view.

        Returns:
            (row, col) (0-based) -> position of the tile's first image token; empty when the
            image was not split.

        Raises:
            ImageTokensNotFoundError: A marker is repeated or not followed by ``seq`` image
                tokens, or the markers do not fill a rows x cols rectangle.
        """
        tokens = self.processor.tokenizer.convert_ids_to_tokens(input_ids.tolist())
        image_id = int(self.model.config.image_token_id)
        starts: dict[tuple[int, int], int] = {}
        for p, token in enumerate(tokens):
            m = _ROW_COL.fullmatch(str(token))
            if m is None:
                continue
            key = (int(m.group(1)) - 1, int(m.group(2)) - 1)
            run = input_ids[p + 1 : p + 1 + seq]
            if key in starts or run.numel() != seq or not bool((run == image_id).all()):
                raise ImageTokensNotFoundError(
                    f"the tile marker {token} is repeated or not followed by {seq} image tokens",
                    "use the processor saved with the model (same image_seq_len as the model "
                    "config), unchanged.",
                )
            starts[key] = p + 1
        if starts:
            rows = 1 + max(r for r, _ in starts)
            cols = 1 + max(c for _, c in starts)
            if len(starts) != rows * cols:
                raise ImageTokensNotFoundError(
                    f"the prompt's tile markers cover {len(starts)} of {rows}x{cols} tiles",
                    "use the processor saved with the model, unchanged.",
                )
        return starts

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        inputs.pop("rows", None), inputs.pop("cols", None)
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        seq = int(self.processor.image_seq_len)
        g = math.isqrt(seq)
        starts = self.tiles_in_prompt(ids[0], seq)
        rows = 1 + max((r for r, _ in starts), default=-1)
        cols = 1 + max((c for _, c in starts), default=-1)
        views = rows * cols + 1
        every = (ids[0] == self.model.config.image_token_id).nonzero().reshape(-1)  # [N]
        if every.numel() != views * seq or g * g != seq:
            raise ImageTokensNotFoundError(
                f"{every.numel()} image tokens in the prompt, but {rows}x{cols} tiles + the "
                f"global image of {seq} tokens need {views * seq}",
                "use the processor saved with the model (same size, max_image_size and "
                "image_seq_len).",
            )
        if self.grid_source == "tiles" and views > 1:
            first = torch.tensor(
                [[starts[(r, c)] for c in range(cols)] for r in range(rows)]
            )  # [rows, cols] first token of each tile
            cell = torch.arange(seq).reshape(g, g)  # [g, g] offset within a tile, row-major
            tiles = first[:, :, None, None] + cell[None, None]  # [rows, cols, g, g]
            positions = tiles.permute(0, 2, 1, 3).reshape(-1)  # [(rows g) (cols g)] row-major
            grid = (rows * g, cols * g)
        else:
            positions = every[(views - 1) * seq :]  # the global image, last
            grid = (g, g)
        return Prepared(
            inputs=inputs, positions=positions.to(torch.long), grid=grid,
            geometry=Geometry.resize(image.size, grid), prompt=prompt, expr=expr,
        )
