"""LLaVA family (llava-hf format): LLaVA-1.5, LLaVA v1, ShareGPT4V, and minilocal's toy model.

Prompt (METHOD section 1): the plain "referseg" template of the reference code, no chat
roles::

    <system sentence>\\n<image>\\n<expression ending with a period>

The query is the last position, i.e. the final "." of the expression.

Image (METHOD section 5): LLaVA-1.5 pads the image to a square filled with the CLIP mean
colour before resizing (``expand2square``); the llava-hf processor instead centre-crops by
default, which cuts off the image borders where referents often are. With
``image_mode="pad"`` (the default) this adapter pads the image itself, so every processor
class (CLIPImageProcessor or LlavaImageProcessor) sees a square and crops nothing;
``image_mode="processor"`` keeps the processor's own behaviour.

A model may carry its own template in its config (``config.minilocal_prompt_template``,
with ``{image}`` and ``{expr}`` placeholders); minilocal's toy model does.

Book: ``book/01_attention.ipynb`` and ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image
from transformers import PreTrainedModel

from ..errors import InputError
from ..geometry import Geometry
from ..images import load_image
from .base import Adapter, Prepared, register_adapter

#: System sentence of LLaVA's ``conv_vicuna_v1`` / ``conv_llava_v1`` templates.
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_TEMPLATE = LLAVA_SYSTEM + "\n{image}\n{expr}"

ImageMode = Literal["pad", "processor"]


def _field(obj, key: str):
    """Read ``key`` from a dict-like or attribute-like processor size field."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def processor_steps(image_processor) -> dict:
    """The resize and crop steps of a transformers image processor, for Geometry.from_steps."""
    steps: dict = {}
    size = getattr(image_processor, "size", None)
    if getattr(image_processor, "do_resize", True) and size is not None:
        if _field(size, "shortest_edge"):
            steps["shortest_edge"] = int(_field(size, "shortest_edge"))
        elif _field(size, "height") and _field(size, "width"):
            steps["resize_hw"] = (int(_field(size, "height")), int(_field(size, "width")))
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        steps["crop_hw"] = (int(_field(crop, "height")), int(_field(crop, "width")))
    steps["pad_to_square"] = bool(getattr(image_processor, "do_pad", False))
    return steps


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Paste ``image`` in the middle of a square of side max(W, H) (LLaVA-1.5's rule)."""
    W, H = image.size
    if W == H:
        return image
    S = max(W, H)
    canvas = Image.new(image.mode, (S, S), background)
    canvas.paste(image, ((S - W) // 2, (S - H) // 2))
    return canvas


@register_adapter
class LlavaAdapter(Adapter):
    """Adapter for ``LlavaForConditionalGeneration`` checkpoints (model type ``llava``).

    Args:
        model: A LlavaForConditionalGeneration.
        processor: Its LlavaProcessor.
        image_mode: "pad" (pad to a square like the original LLaVA-1.5; default) or
            "processor" (whatever the processor does, e.g. a centre crop).
        template: Prompt template with ``{image}`` and ``{expr}``; default: the model
            config's ``minilocal_prompt_template`` if present, else LLaVA's referseg prompt.
    """

    family = "llava"
    model_types = ("llava",)

    def __init__(
        self,
        model: PreTrainedModel,
        processor,
        image_mode: ImageMode = "pad",
        template: str | None = None,
    ):
        super().__init__(model, processor)
        if image_mode not in ("pad", "processor"):
            raise InputError(
                f"image_mode must be 'pad' or 'processor', got {image_mode!r}",
                "use 'pad' (as the original LLaVA-1.5) or 'processor' (the processor's own).",
            )
        self.image_mode = image_mode
        self.template = (
            template or getattr(model.config, "minilocal_prompt_template", None) or LLAVA_TEMPLATE
        )

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.image_token, expr=expr)

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        ip = self.processor.image_processor
        steps = processor_steps(ip)
        model_image = image
        if self.image_mode == "pad":
            mean = getattr(ip, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
            model_image = expand2square(image, tuple(int(m * 255) for m in mean))
            steps["pad_to_square"] = True
        inputs = self.processor(images=model_image, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        canvas_h, canvas_w = inputs["pixel_values"].shape[-2:]
        patch = int(self.model.config.vision_config.patch_size)
        grid = (canvas_h // patch, canvas_w // patch)
        skip = 1 if self.model.config.vision_feature_select_strategy == "full" else 0
        positions = self.locate_image_tokens(ids, self.model.config.image_token_id, grid, skip)
        geometry = Geometry.from_steps(image.size, grid, **steps)
        return Prepared(
            inputs=inputs, positions=positions, grid=grid, geometry=geometry, prompt=prompt,
            expr=expr,
        )
