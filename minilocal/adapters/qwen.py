"""Qwen2-VL / Qwen2.5-VL (transformers-native): a non-square grid of 2x2-merged patches.

Image: the processor resizes the W x H image to ``smart_resize(H, W)`` = (RH, RW), both
multiples of patch_size * merge_size (28), with RH * RW between min_pixels and max_pixels,
aspect ratio kept as closely as the rounding allows, then cuts 14 x 14 patches. The vision
tower merges each 2 x 2 block of patches into one token, so the grid is

    grid = (RH / 28, RW / 28) = (t_h / 2, t_w / 2)    from image_grid_thw = (1, t_h, t_w)

and it is generally NOT square. The merged tokens come out row-major over that grid (the
processor orders the patches block by block; the window attention of Qwen2.5-VL's vision
tower is undone before the merger's output is used). The grid covers the whole resized
image: the geometry is a plain (slightly non-uniform) stretch, ``Geometry.resize``.

Prompt: Qwen's chat format up to the user's turn, ending with the expression, so that the
query is the expression's final "." as in LLaVA's referseg prompt::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|><|image_pad|><|vision_end|>the man on the left.

Fewer pixels (``max_pixels=...``) mean fewer image tokens and less memory.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

from PIL import Image
from transformers import PreTrainedModel

from ..geometry import Geometry
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import resolve_template

QWEN_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{expr}"
)


@register_adapter
class QwenVLAdapter(Adapter):
    """Adapter for Qwen2-VL and Qwen2.5-VL (model types ``qwen2_vl``, ``qwen2_5_vl``).

    Args:
        model: A Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration.
        processor: Its processor.
        template: Prompt template with ``{image}`` and ``{expr}`` (default: Qwen's chat
            format up to the expression, :data:`QWEN_TEMPLATE`).
        min_pixels: Smallest resized image area (default: the processor's).
        max_pixels: Largest resized image area (default: the processor's; lower it to save
            memory: tokens = area / 784).
    """

    family = "qwen-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")

    def __init__(
        self,
        model: PreTrainedModel,
        processor,
        template: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        super().__init__(model, processor)
        self.template = resolve_template(model, template, QWEN_TEMPLATE)
        self.image_kwargs = {}
        if min_pixels is not None or max_pixels is not None:
            size = processor.image_processor.size
            get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
            low = min_pixels if min_pixels is not None else get("shortest_edge")
            high = max_pixels if max_pixels is not None else get("longest_edge")
            self.image_kwargs["size"] = {"shortest_edge": int(low), "longest_edge": int(high)}

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def image_block(self) -> str:
        """``<|vision_start|><|image_pad|><|vision_end|>``, read from the tokenizer."""
        tok = self.processor.tokenizer
        cfg = self.model.config
        start = tok.convert_ids_to_tokens(int(cfg.vision_start_token_id))
        end = tok.convert_ids_to_tokens(int(cfg.vision_end_token_id))
        return f"{start}{self.processor.image_token}{end}"

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.image_block(), expr=expr)

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(
            images=image, text=prompt, return_tensors="pt", **self.image_kwargs
        )
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        _, th, tw = (int(v) for v in inputs["image_grid_thw"][0])  # patches (t, h, w)
        merge = int(self.model.config.vision_config.spatial_merge_size)
        grid = (th // merge, tw // merge)
        positions = self.locate_image_tokens(ids, self.model.config.image_token_id, grid)
        return Prepared(
            inputs=inputs, positions=positions, grid=grid,
            geometry=Geometry.resize(image.size, grid), prompt=prompt, expr=expr,
        )
