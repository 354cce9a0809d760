"""The SAM refiner interface, SAM's frame for the box and the mask prompt, and the checkpoints.

:class:`SamRefiner` holds what both backends share: validation of the box and the mask
prompt, the mask-prompt geometry (:func:`sam_mask_prompt`) and the image-embedding cache
(several boxes on one image encode it once; the encoder is by far the slow part). The
backends implement its ``_encode`` and ``_decode``
(:mod:`minilocal.segmentation.backend_segment_anything`,
:mod:`minilocal.segmentation.backend_transformers`).

**SAM's frame.** SAM resizes the image so its longest side is the encoder's ``img_size``
(1024 for the official models; the short side rounds half up), pastes it at the top-left of an
``img_size`` square (zero padding bottom and right) and works on that square. Its mask prompt
is a ``[m, m]`` map of logits on the same square at a quarter of the image embedding's
stride (m = 256 for the official models, ``img_size / m`` pixels of the square per cell).
:func:`sam_mask_prompt` puts an image-sized mask into that frame.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from ..errors import SamError
from ..images import load_image

Backend = Literal["segment-anything", "transformers"]
ModelType = Literal["vit_b", "vit_l", "vit_h"]

#: Official ``segment-anything`` checkpoints: model type -> (file name, ViT width).
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, int]] = {
    "vit_b": ("sam_vit_b_01ec64.pth", 768),
    "vit_l": ("sam_vit_l_0b3195.pth", 1024),
    "vit_h": ("sam_vit_h_4b8939.pth", 1280),
}
#: Where Meta publishes them (append the file name).
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
#: The same weights converted for transformers, on the Hugging Face Hub.
TRANSFORMERS_IDS: dict[str, str] = {
    "vit_b": "facebook/sam-vit-base",
    "vit_l": "facebook/sam-vit-large",
    "vit_h": "facebook/sam-vit-huge",
}


# =============================================================================== geometry
def sam_input_shape(image_hw: tuple[int, int], img_size: int) -> tuple[int, int]:
    """(h, w) of the image inside SAM's square: longest side ``img_size``, round half up.

    The same rule as segment-anything's ``ResizeLongestSide.get_preprocess_shape`` and
    transformers' ``SamImageProcessor._get_preprocess_shape``.

    Book: ``book/05_grounding.ipynb``.
    """
    h, w = image_hw
    scale = img_size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _overlap_matrix(n_cells: int, cell: float, n_pixels: int) -> np.ndarray:
    """[n_cells, n_pixels]: length of [i*cell, (i+1)*cell) inside pixel [p, p+1)."""
    lo = np.arange(n_cells)[:, None] * cell
    hi = lo + cell
    p = np.arange(n_pixels)[None, :]
    return np.clip(np.minimum(hi, p + 1) - np.maximum(lo, p), 0, None)


def sam_mask_prompt(
    mask: np.ndarray,
    img_size: int,
    prompt_size: int,
    *,
    logit: float = 10.0,
) -> np.ndarray:
    """An image-sized mask as SAM's low-resolution mask prompt (logits in SAM's frame).

    Each prompt cell covers ``img_size / prompt_size`` pixels of SAM's padded square; mapped
    back through the resize (``sam_input_shape``) that is a rectangle of the ORIGINAL image.
    The cell's value is the exact area fraction ``p`` of that rectangle covered by ``mask``
    (cells wholly or partly in the padding count the padding as background), turned into a
    logit ``logit * (2 p - 1)``: fully covered cells get ``+logit``, empty ones ``-logit``,
    half-covered ones 0, SAM's mask threshold.

    SAM was trained with its own previous low-res logits as mask prompts; the scale of such
    logits for a hand-made mask is not fixed by SAM or by the paper (``logit`` is a choice,
    10 by default).

    Args:
        mask: [H, W] bool, or float in [0, 1] (a soft mask), in image pixels.
        img_size: Side of SAM's input square (1024 for the official models).
        prompt_size: Side of the mask prompt: 4 x the image-embedding side (256 official).
        logit: Magnitude of the logits of fully covered / empty cells.

    Returns:
        [prompt_size, prompt_size] float32 logits.

    Book: ``book/05_grounding.ipynb``.
    """
    m = np.asarray(mask, dtype=np.float64)  # [H, W]
    H, W = m.shape
    new_h, new_w = sam_input_shape((H, W), img_size)
    square = img_size / prompt_size  # square pixels per prompt cell
    # One prompt cell, in original-image pixels (x and y scale differ by the rounding).
    cell_y, cell_x = square * H / new_h, square * W / new_w
    ry = _overlap_matrix(prompt_size, cell_y, H)  # [m, H]
    rx = _overlap_matrix(prompt_size, cell_x, W)  # [m, W]
    covered = ry @ m @ rx.T / (cell_y * cell_x)  # [m, m] area fraction of each cell
    return (logit * (2.0 * covered - 1.0)).astype(np.float32)


# =============================================================================== refiners
@dataclass(frozen=True)
class Refinement:
    """SAM's answer for one box.

    Attributes:
        mask: [H, W] bool mask in image pixels.
        score: SAM's predicted IoU of ``mask``.
        index: Which candidate was chosen: 0 for single-mask output; 0-2 (the argmax of
            ``scores``) among the three multimask candidates.
        scores: [C] predicted IoU of every candidate (C = 1 or 3).

    Book: ``book/05_grounding.ipynb``.
    """

    mask: np.ndarray
    score: float
    index: int
    scores: np.ndarray


def _image_key(image: Image.Image) -> tuple:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return image.size, image.mode, digest


class SamRefiner(abc.ABC):
    """Prompt SAM with a box (and optionally a mask); cache the image embedding.

    Subclasses implement ``_encode`` (run the image encoder) and ``_decode`` (prompt the
    mask decoder). ``encoder_calls`` counts how many times the image encoder ran.

    Book: ``book/05_grounding.ipynb``.
    """

    backend: str = ""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._hw: tuple[int, int] | None = None
        self.encoder_calls = 0

    # -------------------------------------------------------------- subclass interface
    @property
    @abc.abstractmethod
    def img_size(self) -> int:
        """Side of SAM's input square (the encoder's ``img_size``)."""

    @property
    @abc.abstractmethod
    def prompt_size(self) -> int:
        """Side of SAM's low-res mask prompt (4 x the image-embedding side)."""

    @abc.abstractmethod
    def _encode(self, image: np.ndarray) -> None:
        """Compute and keep the embedding of an [H, W, 3] uint8 RGB image."""

    @abc.abstractmethod
    def _decode(
        self, box: np.ndarray, prompt: np.ndarray | None, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks [C, H, W] bool and scores [C] for a box [4] in image pixels and a prompt
        [prompt_size, prompt_size] of logits (or None)."""

    # -------------------------------------------------------------- public
    def set_image(self, image: Image.Image) -> bool:
        """Encode ``image`` unless it is the image encoded last (same size and pixels).

        Args:
            image: RGB PIL image (other modes are converted by :func:`~minilocal.images.load_image`).

        Returns:
            True when the encoder ran, False when the cached embedding was reused.

        Book: ``book/05_grounding.ipynb``.
        """
        image = load_image(image)
        key = _image_key(image)
        if key == self._key:
            return False
        self._key = None
        self._encode(np.asarray(image, dtype=np.uint8))
        self._key, self._hw = key, (image.size[1], image.size[0])
        self.encoder_calls += 1
        return True

    def refine(
        self,
        image: Image.Image,
        box,
        *,
        mask_prompt: np.ndarray | None = None,
        multimask: bool = False,
        mask_logit: float = 10.0,
    ) -> Refinement:
        """SAM's mask for the object in ``box``.

        Args:
            image: RGB PIL image [W x H]. Refining several boxes on the same image encodes
                it once.
            box: [4] xyxy in image pixels.
            mask_prompt: Optional [H, W] mask (bool, or float in [0, 1]) given to SAM as its
                low-res mask prompt, via :func:`sam_mask_prompt` (e.g. the upsampled pseudo
                mask of the localization heads).
            multimask: False: SAM's single-mask output. True: the best-scoring (predicted
                IoU) of its three candidates.
            mask_logit: Logit magnitude of the mask prompt's full / empty cells (see
                :func:`sam_mask_prompt`; a choice, not fixed by SAM or the paper).

        Returns:
            The :class:`Refinement` (mask [H, W] bool, score, chosen index, all scores).

        Raises:
            SamError: Malformed box or mask prompt.
            ImageError: Not an image.

        Book: ``book/05_grounding.ipynb``.
        """
        image = load_image(image)
        W, H = image.size
        box = _check_box(box, (W, H))
        prompt = None
        if mask_prompt is not None:
            prompt = sam_mask_prompt(
                _check_mask(mask_prompt, (W, H)), self.img_size, self.prompt_size, logit=mask_logit
            )
        self.set_image(image)
        masks, scores = self._decode(box, prompt, multimask)  # [C, H, W], [C]
        i = int(np.argmax(scores))
        return Refinement(mask=masks[i], score=float(scores[i]), index=i, scores=scores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(img_size={self.img_size}, prompt_size={self.prompt_size})"


def _check_box(box, image_size: tuple[int, int]) -> np.ndarray:
    W, H = image_size
    try:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise SamError(f"box {box!r} is not 4 numbers", "pass xyxy pixels [x0, y0, x1, y1].") from exc
    if b.shape != (4,) or not np.isfinite(b).all():
        raise SamError(
            f"box {box!r} is not 4 finite numbers",
            "pass one box as xyxy pixels [x0, y0, x1, y1] (minilocal.grounding gives it).",
        )
    x0, y0, x1, y1 = b
    if x1 < x0 or y1 < y0:
        raise SamError(
            f"box {b.tolist()} has x1 < x0 or y1 < y0",
            "pass xyxy (corners), not xywh; convert [x, y, w, h] with [x, y, x + w, y + h].",
        )
    if x1 <= 0 or y1 <= 0 or x0 >= W or y0 >= H:
        raise SamError(
            f"box {b.tolist()} lies outside the {W}x{H} image",
            "pass the box in pixels of THIS image (not grid units, not a resized copy).",
        )
    return b


def _check_mask(mask, image_size: tuple[int, int]) -> np.ndarray:
    W, H = image_size
    m = np.asarray(mask)
    if m.shape != (H, W):
        raise SamError(
            f"mask_prompt has shape {m.shape}; the image needs (H, W) = {(H, W)}",
            "upsample the grid pseudo mask to image pixels first "
            "(Geometry.mask_to_image or Geometry.map_to_image).",
        )
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise SamError(f"mask_prompt has dtype {m.dtype}", "pass a bool or float mask.")
        m = m.astype(np.float64)
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise SamError(
                f"mask_prompt values span [{np.nanmin(m)}, {np.nanmax(m)}], not [0, 1]",
                "pass a bool mask or a soft mask in [0, 1] (not logits, not 0-255).",
            )
    return m
