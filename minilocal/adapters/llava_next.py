"""LLaVA-NeXT (v1.6) and LLaVA-OneVision (transformers-native): "anyres" images.

The processor turns one image into a BASE view and HIGH-RES tiles:

* base: the whole image stretched to the vision tower's square input (336 or 384 px), one
  (hb x wb) = (24 x 24) or (27 x 27) grid of tokens;
* high-res: the image resized (aspect kept) into the best of ``image_grid_pinpoints``,
  padded to it with zeros (centred), cut into tiles of the tower's input size. The model
  joins the tiles' grids into one (nph*hb) x (npw*wb) grid, removes the rows or columns that
  are padding ("unpad"), and LLaVA-OneVision also shrinks it bilinearly when it holds more
  than ``anyres_max_9`` tiles' worth of tokens. After each row of this grid the model puts
  one ``image_newline`` token.

In the prompt the image's tokens are, in order: base grid row-major (hb*wb tokens), then
the high-res rows, each followed by its newline token. This adapter drops the newlines and
offers either grid (``grid_source``):

* ``"base"`` (default): the square base grid, a stretch of the whole image (like Qwen's);
* ``"highres"``: the unpadded high-res grid (not square in general), whose cells are
  smaller; its geometry follows the resize, the centred padding and the unpad.

S_img is then the attention mass on the chosen grid only (the other view's tokens are
keys too, but not counted).

Prompt: the family's chat format up to the expression (query = the expression's ".").

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import math
from typing import Literal

from PIL import Image
from transformers import PreTrainedModel
from transformers.image_processing_utils import select_best_resolution

from ..errors import InputError, ModelNotSupportedError
from ..images import load_image
from .base import Adapter, Prepared, register_adapter
from .common import expect_count, placed_geometry, resolve_template

GridSource = Literal["base", "highres"]

#: LLaVA-NeXT with a Vicuna (or other Llama) backbone: its conversation format, up to the
#: expression.
LLAVA_NEXT_TEMPLATE = "USER: {image}\n{expr}"
#: LLaVA-NeXT with a Mistral backbone (llava-v1.6-mistral-7b-hf): its chat template's user
#: turn, ``[INST] <image>\n... [/INST]``, up to the expression.
LLAVA_NEXT_MISTRAL_TEMPLATE = "[INST] {image}\n{expr}"
#: LLaVA-OneVision (Qwen2 chat format), up to the expression.
LLAVA_ONEVISION_TEMPLATE = "<|im_start|>user {image}\n{expr}"


def _size_field(size, key):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _patch_output_size(H: int, W: int, target: tuple[int, int]) -> tuple[int, int]:
    """transformers' ``get_patch_output_size``: fit (H, W) into target (aspect kept)."""
    th, tw = target
    sw, sh = tw / W, th / H
    if sw < sh:
        return min(math.ceil(H * sw), th), tw
    return th, min(math.ceil(W * sh), tw)


def _unpad(H: int, W: int, gh: int, gw: int) -> tuple[int, int, int, int]:
    """The model's ``unpad_image`` on a (gh, gw) grid: returns (h, w, top, left)."""
    if W / H > gw / gh:
        new_h = int(round(H * (gw / W), 7))
        pad = (gh - new_h) // 2
        return gh - 2 * pad, gw, pad, 0
    new_w = int(round(W * (gh / H), 7))
    pad = (gw - new_w) // 2
    return gh, gw - 2 * pad, 0, pad


@register_adapter
class LlavaNextAdapter(Adapter):
    """Adapter for LLaVA-NeXT and LLaVA-OneVision (``llava_next``, ``llava_onevision``).

    Args:
        model: A LlavaNextForConditionalGeneration or LlavaOnevisionForConditionalGeneration.
        processor: Its processor.
        grid_source: "base" (the whole-image square grid; default) or "highres" (the
            unpadded high-res grid, newline tokens dropped).
        template: Prompt template with ``{image}`` and ``{expr}``.
    """

    family = "llava-next"
    model_types = ("llava_next", "llava_onevision")

    def __init__(
        self,
        model: PreTrainedModel,
        processor,
        grid_source: GridSource = "base",
        template: str | None = None,
    ):
        super().__init__(model, processor)
        if grid_source not in ("base", "highres"):
            raise InputError(
                f"grid_source must be 'base' or 'highres', got {grid_source!r}",
                "pick one of the grids this family offers (see the adapter's docstring).",
            )
        self.grid_source = grid_source
        onevision = model.config.model_type == "llava_onevision"
        text_type = getattr(getattr(model.config, "text_config", None), "model_type", None)
        default = (LLAVA_ONEVISION_TEMPLATE if onevision
                   else LLAVA_NEXT_MISTRAL_TEMPLATE if text_type == "mistral"
                   else LLAVA_NEXT_TEMPLATE)
        self.template = resolve_template(model, template, default)

    def decoder(self) -> PreTrainedModel:
        return self.model.model.language_model

    def build_prompt(self, expr: str) -> str:
        return self.template.format(image=self.processor.image_token, expr=expr)

    # ------------------------------------------------------------------ layout
    def _tile_is_identity(self, tile: int) -> bool:
        """Each tile/base view goes through resize + crop unchanged (true for the hub models)."""
        ip = self.processor.image_processor
        size = getattr(ip, "size", None)
        sizes = {_size_field(size, "shortest_edge"), _size_field(size, "height")} - {None}
        crop = getattr(ip, "crop_size", None)
        if getattr(ip, "do_center_crop", False) and crop is not None:
            sizes.add(_size_field(crop, "height"))
        return sizes <= {tile}

    def layout(self, image_size: tuple[int, int]) -> dict:
        """Grids and geometries of both views for an image of (W, H), as the model packs them.

        Returns:
            dict with ``base`` and ``highres`` (each: grid (h, w) and Geometry), the
            high-res grid before OneVision's shrink (``unpadded``) and ``total`` tokens.
        """
        W, H = image_size
        cfg = self.model.config
        tile = int(cfg.vision_config.image_size)
        g = tile // int(cfg.vision_config.patch_size)  # hb = wb
        if not self._tile_is_identity(tile):
            raise ModelNotSupportedError(
                "this processor resizes or crops each anyres tile again (size or crop_size "
                f"differs from the vision tower's {tile} px)",
                "use the processor saved with the model; minilocal maps the grid back only "
                "when tiles pass through unchanged, as in the llava-hf checkpoints.",
            )
        base_grid = (g, g)
        base_geometry = placed_geometry(
            (W, H), base_grid, (tile, tile), (0, 0, tile, tile), kind="resize"
        )
        pinpoints = self.model.config.image_grid_pinpoints
        BH, BW = select_best_resolution((H, W), pinpoints)
        nph, npw = BH // tile, BW // tile
        nh, nw = _patch_output_size(H, W, (BH, BW))
        paste_y, paste_x = (BH - nh) // 2, (BW - nw) // 2
        cur_h, cur_w, top, left = _unpad(H, W, nph * g, npw * g)
        cell = tile / g  # canvas pixels per high-res cell
        hr, wr = cur_h, cur_w
        if cfg.model_type == "llava_onevision":
            aspect = str(getattr(cfg, "vision_aspect_ratio", "anyres_max_9"))
            max_tiles = int(aspect.removeprefix("anyres_max_"))  # "anyres_max_9" -> 9
            ratio = math.sqrt(cur_h * cur_w / (max_tiles * g**2))
            if ratio > 1.1:
                hr, wr = int(cur_h // ratio), int(cur_w // ratio)
        high_geometry = placed_geometry(
            (W, H), (hr, wr), (cur_h * cell, cur_w * cell),
            (paste_x - left * cell, paste_y - top * cell, nw, nh),
        )
        return {
            "base": (base_grid, base_geometry),
            "highres": ((hr, wr), high_geometry),
            "unpadded": (cur_h, cur_w),
            "total": g * g + hr * (wr + 1),
        }

    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        image = load_image(image)
        expr = self.normalize(expr)
        prompt = self.build_prompt(expr)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        ids = inputs["input_ids"]  # [1, T]
        self.check_length(ids, expr)
        H, W = (int(v) for v in inputs["image_sizes"][0])
        lay = self.layout((W, H))
        positions = (ids[0] == self.model.config.image_token_id).nonzero().reshape(-1)  # [N]
        expect_count(positions.numel(), lay["total"], "the anyres layout (base + rows + newlines)")
        (hb, wb), _ = lay["base"]
        (hr, wr), _ = lay["highres"]
        if self.grid_source == "base":
            positions = positions[: hb * wb]
        else:
            positions = positions[hb * wb :].reshape(hr, wr + 1)[:, :wr].reshape(-1)  # no newlines
        grid, geometry = lay[self.grid_source]
        return Prepared(
            inputs=inputs, positions=positions, grid=grid, geometry=geometry, prompt=prompt,
            expr=expr,
        )
