"""DeepSeek-VL 1.3B / 7B (transformers-native ``DeepseekVL`` / ``DeepseekVLHybrid``).

Image: the processor resizes the image so its LONG side is 384 px (aspect kept, short
side rounded, at least ``min_size``), then pads it to a 384 x 384 square, centred, with
the CLIP-mean colour; SigLIP (patch 16) gives a 24 x 24 grid of 576 tokens, row-major.
The hybrid 7B model first resizes-and-pads to a 1024 px square (the view its SAM encoder
sees), then shrinks that square to 384 px for SigLIP; both views are fused into the same
576 tokens, so the grid is the 24 x 24 one and the placement is the 1024 px one scaled by
384 / 1024. The geometry is the pad-to-square of LLaVA-1.5, computed with the processor's
own rounding (resize first, then pad; ``common.placed_geometry``).

Prompt: DeepSeek-VL's conversation format up to the expression::

    User: <image_placeholder>\\nthe man on the left.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

from PIL import Image
from transformers import PreTrainedModel

from ..errors import ModelNotSupportedError
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import placed_geometry, resolve_template

DEEPSEEK_VL_TEMPLATE = "User: {image}\n{expr}"


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def resize_and_pad_placement(
    image_size: tuple[int, int], side: int, min_size: int
) -> tuple[float, float, float, float]:
    """Where DeepSeek-VL's processor puts a (W, H) image on its side x side canvas.

    Returns:
        (x0, y0, new_w, new_h): the resized image's corner and size on the canvas.
    """
    W, H = image_size
    delta = side / max(W, H)
    new_h = max(round(H * delta), min_size)
    new_w = max(round(W * delta), min_size)
    if W == H or new_w == new_h == side:
        return 0, 0, new_w, new_h
    if W > H:
        return 0, (side - new_h) // 2, new_w, new_h
    return (side - new_w) // 2, 0, new_w, new_h


@register_adapter
class DeepseekVLAdapter(Adapter):
    """Adapter for DeepSeek-VL (model types ``deepseek_vl`` and ``deepseek_vl_hybrid``).

    Args:
        model: A DeepseekVLForConditionalGeneration or DeepseekVLHybridForConditionalGeneration.
        processor: Its processor.
        template: Prompt template with ``{image}`` and ``{expr}``.
    """

    family = "deepseek-vl"
    model_types = ("deepseek_vl", "deepseek_vl_hybrid")

    def __init__(self, model: PreTrainedModel, processor, template: str | None = None):
        super().__init__(model, processor)
        self.template = resolve_template(model, template, DEEPSEEK_VL_TEMPLATE)

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.image_token, expr=expr)

    def placement(self, image_size: tuple[int, int], side: int) -> tuple[float, ...]:
        """(x0, y0, w, h) of the image on the side x side canvas the grid covers.

        Raises:
            ModelNotSupportedError: The processor does not pad (``do_pad=False``): the
                canvas is then not the one the model was trained on.
        """
        ip = self.processor.image_processor
        if not getattr(ip, "do_pad", True):
            raise ModelNotSupportedError(
                "this DeepSeek-VL processor has do_pad=False, so non-square images are "
                "stretched differently from training",
                "use the processor saved with the model (do_pad=True).",
            )
        min_size = int(getattr(ip, "min_size", 14))
        high = getattr(ip, "high_res_size", None)
        if high is None:
            return resize_and_pad_placement(image_size, side, min_size)
        hs = int(_get(high, "height"))
        x0, y0, w, h = resize_and_pad_placement(image_size, hs, min_size)
        f = side / hs
        return x0 * f, y0 * f, w * f, h * f

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        side = int(inputs["pixel_values"].shape[-1])
        g = side // int(self.model.config.vision_config.patch_size)
        grid = (g, g)
        positions = self.locate_image_tokens(ids, self.model.config.image_token_id, grid)
        geometry = placed_geometry(
            image.size, grid, (side, side), self.placement(image.size, side), kind="pad_to_square"
        )
        return Prepared(
            inputs=inputs, positions=positions, grid=grid, geometry=geometry, prompt=prompt,
            expr=expr,
        )
