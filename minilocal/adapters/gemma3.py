"""Gemma 3 (transformers-native ``Gemma3ForConditionalGeneration``).

Image: the processor stretches the image to the SigLIP input square (896 px), 64 x 64
patches of 14 px, and the projector average-pools them 4 x 4 into a t x t = 16 x 16 grid
of ``mm_tokens_per_image`` = 256 tokens, row-major. The geometry is a plain stretch of the
whole image (``Geometry.resize``). Pan-and-scan (extra crops of long images) is switched
off here, so there is exactly one grid.

Prompt: Gemma's chat turn up to the expression; the processor replaces the
``<start_of_image>`` placeholder by ``\\n\\n<start_of_image>`` + 256 image tokens +
``<end_of_image>\\n\\n``::

    <start_of_turn>user\\n<start_of_image>\\nthe man on the left.

Attention: Gemma 3 alternates sliding-window layers (window 1024 in the 4B model) with
global layers, and lets image tokens attend to each other both ways. The last query row
is unaffected by the bidirectional part (it is a text token); in a sliding-window layer
it sees only the last ``sliding_window`` keys, so image tokens further back get exactly 0
there. Both capture paths take this from the model's own mask (SDPA, eager) or, under
flash-attention, which gets no 4-D mask, from the layer's ``sliding_window`` keyword.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import math

from PIL import Image
from transformers import PreTrainedModel

from ..geometry import Geometry
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import resolve_template

GEMMA3_TEMPLATE = "<start_of_turn>user\n{image}\n{expr}"


@register_adapter
class Gemma3Adapter(Adapter):
    """Adapter for ``Gemma3ForConditionalGeneration`` (model type ``gemma3``).

    Args:
        model: A Gemma3ForConditionalGeneration.
        processor: Its Gemma3Processor.
        template: Prompt template with ``{image}`` and ``{expr}``.
    """

    family = "gemma3"
    model_types = ("gemma3",)

    def __init__(self, model: PreTrainedModel, processor, template: str | None = None):
        super().__init__(model, processor)
        self.template = resolve_template(model, template, GEMMA3_TEMPLATE)

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.boi_token, expr=expr)

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(
            images=image, text=prompt, return_tensors="pt", do_pan_and_scan=False
        )
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        side = math.isqrt(int(self.model.config.mm_tokens_per_image))
        grid = (side, side)
        positions = self.locate_image_tokens(ids, self.model.config.image_token_id, grid)
        return Prepared(
            inputs=inputs, positions=positions, grid=grid,
            geometry=Geometry.resize(image.size, grid), prompt=prompt, expr=expr,
        )
