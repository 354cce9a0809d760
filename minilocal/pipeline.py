"""The whole method in one object: a model, its localization heads and (optionally) SAM.

    >>> from minilocal import Grounder
    >>> grounder = Grounder.from_pretrained()            # the embedded shapes model, offline
    >>> result = grounder.ground("photo.png", "the red circle left of the square")
    >>> result.box                                        # xyxy pixels

``Grounder.from_pretrained("llava-hf/llava-1.5-7b-hf", heads="heads.json", sam=...)`` runs
the same steps on a real LVLM. The model is loaded once; every call is one prefill forward.

Book: ``book/05_grounding.ipynb`` and ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .attention import Method
from .errors import HeadTableError, InputError, MinilocalError, SamError, UnknownWordsWarning
from .grounding import Component, Grounding, Threshold, ground
from .images import MAX_PIXELS, load_image
from .selection import HeadTable, parse_head

#: File name of the head table shipped inside a model folder.
HEADS_FILE = "heads.json"


@dataclass
class Result:
    """Grounding of one expression on one image.

    Attributes:
        expr: The expression as given to the model (normalised).
        prompt: The prompt string.
        box: [4] xyxy pixels, or None ("no foreground"; see ``reason``).
        mask: [H, W] bool: SAM's mask when a SAM is set, else the upsampled pseudo mask.
        mask_source: "sam" or "pseudo".
        grounding: The step-4 details (combined map, pseudo mask, hull, geometry).
        attn: [L, H, h, w] attention of every head (kept for inspection).
        sam_score: SAM's predicted IoU of its mask, if SAM ran.
        reason: Why there is no box, or None.
        unknown_words: Words of the expression outside the model's vocabulary (read as
            ``<unk>``; only a closed vocabulary such as the embedded model's has any).
    """

    expr: str
    prompt: str
    box: np.ndarray | None
    mask: np.ndarray
    mask_source: str
    grounding: Grounding
    attn: np.ndarray
    sam_score: float | None = None
    reason: str | None = None
    unknown_words: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: box, heads, grid, image size, reason."""
        g = self.grounding
        return {
            "expr": self.expr,
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "heads": [f"L{layer}H{head}" for layer, head in g.heads],
            "grid": list(g.geometry.grid),
            "image_size": list(g.geometry.image_size),
            "mask_source": self.mask_source,
            "mask_area": int(self.mask.sum()),
            "sam_score": None if self.sam_score is None else round(float(self.sam_score), 4),
            "reason": self.reason,
            "unknown_words": list(self.unknown_words),
        }


class Grounder:
    """A vision-language model with its localization heads, ready to ground expressions.

    Args:
        model: The loaded model.
        processor: Its processor.
        adapter: Its family adapter (:func:`minilocal.adapters.get_adapter`).
        heads: A :class:`~minilocal.selection.HeadTable`, or heads as (layer, head) pairs or
            "L14H24" strings.
        sam: A :class:`~minilocal.segmentation.SamRefiner`, or None (mask = pseudo mask).
        sigma, threshold, component: Step-4 settings (see :func:`minilocal.grounding.ground`).
        mask_prompt: Also give SAM the pseudo mask as a low-resolution mask prompt.
        multimask: Let SAM propose three masks and keep the best-scoring one.
        max_pixels: Largest image accepted (W * H; :func:`minilocal.images.load_image`).
    """

    def __init__(
        self,
        model,
        processor,
        adapter,
        heads,
        sam=None,
        *,
        sigma: float = 1.0,
        threshold: Threshold = "mean",
        component: Component = "all",
        mask_prompt: bool = False,
        multimask: bool = False,
        max_pixels: int = MAX_PIXELS,
    ):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
                or not math.isfinite(sigma) or sigma < 0:
            raise InputError(f"sigma must be a finite number >= 0, got {sigma!r}",
                             "use sigma=1.0 (paper: one grid cell), or 0 for no smoothing.")
        if int(max_pixels) != max_pixels or max_pixels < 1:
            raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}",
                             f"use e.g. max_pixels={MAX_PIXELS} (the default).")
        self.max_pixels = int(max_pixels)
        self.model, self.processor, self.adapter = model, processor, adapter
        if isinstance(heads, HeadTable):
            heads.check_model(adapter.num_layers, adapter.num_heads, model_id=adapter.model_id())
            self.head_table: HeadTable | None = heads
            self.heads = [tuple(h) for h in heads.heads]
        else:
            self.head_table = None
            self.heads = [parse_head(h) if isinstance(h, str) else (int(h[0]), int(h[1]))
                          for h in heads]
            for layer, head in self.heads:
                if not (0 <= layer < adapter.num_layers and 0 <= head < adapter.num_heads):
                    raise HeadTableError(
                        f"head L{layer}H{head} does not exist in this model "
                        f"({adapter.num_layers} layers x {adapter.num_heads} heads)",
                        "use heads found for this model (minilocal find-heads), with 0-based "
                        "layer and head indices.",
                    )
            dup = next((h for i, h in enumerate(self.heads) if h in self.heads[:i]), None)
            if dup is not None:
                raise HeadTableError(
                    f"head L{dup[0]}H{dup[1]} is listed twice",
                    "list each head once (a repeated head would count twice in the combined "
                    "map).",
                )
        if not self.heads:
            raise HeadTableError("no heads given", "pass a head table or at least one head.")
        self.sam = sam
        self.settings = dict(sigma=sigma, threshold=threshold, component=component)
        self.mask_prompt, self.multimask = mask_prompt, multimask

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "shapes",
        heads: str | os.PathLike | HeadTable | list | None = None,
        sam: str | os.PathLike | None = None,
        *,
        sam_backend: str = "segment-anything",
        sam_model_type: str = "vit_b",
        device: str | None = None,
        dtype=None,
        quantization=None,
        **kwargs,
    ) -> Grounder:
        """Load a model (hub id, local folder or alias such as "shapes"), heads and SAM.

        Args:
            model: Model id, folder or alias (:data:`minilocal.models.MODEL_ALIASES`).
            heads: Head table path, HeadTable, or list of heads. Default: the table shipped
                in the model folder (``heads.json``), or the published table for the alias.
            sam: SAM checkpoint path / model id; "shapes" is the embedded small SAM; None
                keeps the pseudo mask as the mask.
            sam_backend: "segment-anything" or "transformers".
            sam_model_type: Architecture of a segment-anything checkpoint (vit_b/l/h).
            device, dtype: Where and how to load the model.
            quantization: None, "8bit" or "4bit" (bitsandbytes, CUDA only).
            **kwargs: Step-4 settings and SAM options for :class:`Grounder`.
        """
        from .models import default_heads_path, load_model

        mdl, processor, adapter = load_model(model, device=device, dtype=dtype,
                                             quantization=quantization)
        if heads is None:
            path = default_heads_path(model)
            if path is None:
                raise HeadTableError(
                    f"no head table is known for {str(model)!r}",
                    "find its heads first (minilocal find-heads --model ... -o heads.json) "
                    "and pass heads='heads.json'.",
                )
            heads = path
        if isinstance(heads, (str, os.PathLike)):
            heads = HeadTable.from_json(heads)
        refiner = None
        if sam is not None:
            from .segmentation import load_sam

            try:
                refiner = load_sam(sam_backend, sam, model_type=sam_model_type, device=device)
            except MinilocalError:
                raise
            except Exception as err:  # unreadable folder or file, wrong format ...
                raise SamError(
                    f"cannot load SAM from {str(sam)!r} ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})",
                    "give a readable segment-anything .pth checkpoint (with --sam-model-type), "
                    "a transformers SAM folder or id (--sam-backend transformers), or 'shapes'.",
                ) from err
        return cls(mdl, processor, adapter, heads, refiner, **kwargs)

    # ------------------------------------------------------------------ steps
    def attention(self, image, expr: str, method: Method = "capture"):
        """Step 1: ``(attn [L, H, h, w], prepared)`` for one image and expression."""
        return self.adapter.attention(image, expr, method=method)

    def ground(self, image: str | os.PathLike | Image.Image, expr: str) -> Result:
        """Steps 1 and 4 (and SAM): box and mask of the object ``expr`` refers to.

        Book: ``book/05_grounding.ipynb``.
        """
        image = load_image(image, max_pixels=self.max_pixels)
        attn, prepared = self.attention(image, expr)
        unknown = self.adapter.unknown_words(prepared.expr)
        if unknown:
            from .adapters.base import known_words

            known = known_words(self.processor)
            warnings.warn(
                f"minilocal: this model does not know the word(s) {', '.join(map(repr, unknown))} "
                f"of {prepared.expr!r}: it reads them as <unk>, so the box may not follow the "
                "expression. "
                + (f"Words it knows: {' '.join(known)}." if known else ""),
                UnknownWordsWarning, stacklevel=2,
            )
        g = ground(attn, self.heads, prepared.geometry, **self.settings)
        mask, source, score = g.mask, "pseudo", None
        if self.sam is not None and g.box is not None:
            try:
                ref = self.sam.refine(
                    image, g.box, mask_prompt=g.mask if self.mask_prompt else None,
                    multimask=self.multimask,
                )
            except MinilocalError:
                raise
            except Exception as err:  # e.g. an image so thin that SAM's resize gives 0 px
                w, h = image.size
                first = (str(err).strip().splitlines() or [""])[0]
                raise SamError(
                    f"SAM could not refine the box on this {w}x{h} image "
                    f"({type(err).__name__}: {first})",
                    "SAM resizes the longest side to its input size: an image this elongated "
                    f"(aspect {max(w, h) / min(w, h):.0f}:1) is too thin for it; crop or pad it, "
                    "or run without --sam (the pseudo mask is then the mask).",
                ) from err
            mask, source, score = ref.mask, "sam", ref.score
        return Result(
            expr=prepared.expr, prompt=prepared.prompt, box=g.box, mask=mask,
            mask_source=source, grounding=g, attn=attn, sam_score=score, reason=g.reason,
            unknown_words=unknown,
        )

