"""What a model family must tell minilocal: prompt, image-token positions, grid, geometry.

Everything after step 1 of the slides is model-agnostic: it works on [layers, heads, h, w]
maps and a :class:`~minilocal.geometry.Geometry`. The family-specific part is small and lives
in one :class:`Adapter` subclass per family:

* how the prompt is built around the expression (:meth:`Adapter.build_prompt`),
* where the image tokens are in the tokenized prompt and the grid they form
  (:meth:`Adapter.prepare`, which returns a :class:`Prepared`),
* how the processor maps the image onto the grid (the ``geometry`` of :class:`Prepared`),
* which module is the decoder whose attention is recorded (:meth:`Adapter.decoder`).

Adapters register themselves by ``config.model_type``; :func:`get_adapter` picks one.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel

from ..attention import Method, last_token_attention
from ..errors import ExpressionError, ImageTokensNotFoundError, ModelNotSupportedError
from ..geometry import Geometry


@dataclass
class Prepared:
    """One image-expression pair, ready for the model.

    Attributes:
        inputs: Processor output for a batch of one (input_ids, pixel_values, ...).
        positions: [n] positions of the image tokens in the prompt, row-major grid order
            (n = h * w; extra tokens such as row separators are already dropped).
        grid: (h, w) of the image tokens.
        geometry: Grid-to-image map for this image.
        prompt: The prompt string given to the processor (before image-token expansion).
        expr: The normalised expression inside the prompt.
    """

    inputs: dict
    positions: torch.Tensor
    grid: tuple[int, int]
    geometry: Geometry
    prompt: str
    expr: str


def special_token_strings(processor) -> list[str]:
    """Every special token of a processor's tokenizer, as text (``<image>``, ``</s>``, ...).

    The tokenizer's named special tokens, its added tokens marked special, and the
    processor's own placeholders (``image_token``, ``video_token``, ``boi_token`` ...), whatever
    their tokenizer calls them. White-space-only tokens are left out (an expression's white
    space is collapsed anyway).
    """
    tok = getattr(processor, "tokenizer", processor)
    found = list(getattr(tok, "all_special_tokens", []) or [])
    for added in (getattr(tok, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.append(str(added.content))
    for owner in (processor, tok):
        for name in ("image_token", "video_token", "boi_token", "eoi_token", "image_start_token",
                     "image_end_token", "fake_image_token", "global_image_token"):
            value = getattr(owner, name, None)
            if isinstance(value, str):
                found.append(value)
    return sorted({t for t in found if t and t.strip()}, key=lambda t: (-len(t), t))


def check_no_special_tokens(expr: str, processor) -> None:
    """Refuse an expression whose text would give the model one of its special tokens.

    User text must never produce a special token: ``"the <image> red circle"`` would add an
    image placeholder (the processor then fails on the image-token count) and ``"</s> ..."``
    an end-of-sequence token that changes what the last token attends to. The check asks
    the tokenizer itself (an id of a special token among the expression's ids) and, for
    the message, which special strings the text holds.

    Raises:
        ExpressionError: Naming the special token(s) found and the fix.
    """
    tok = getattr(processor, "tokenizer", processor)
    strings = special_token_strings(processor)
    inside = [t for t in strings if t in expr]
    produced = []
    if not inside and callable(tok):
        special_ids = set(tok.convert_tokens_to_ids(strings)) - {tok.unk_token_id}
        produced = [i for i in tok(expr, add_special_tokens=False)["input_ids"]
                    if i in special_ids]
    if inside or produced:
        named = inside or [tok.convert_ids_to_tokens(i) for i in produced]
        raise ExpressionError(
            f"the expression {expr!r} contains {', '.join(repr(t) for t in named)}: a special "
            "token of this model's tokenizer (image placeholder, start/end of text or chat "
            "marker), which user text must not produce",
            "remove it from the expression (or write it differently, e.g. 'image' without "
            "the brackets); the image is given separately.",
        )


def unknown_words(expr: str, processor) -> tuple[str, ...]:
    """The words of ``expr`` that the tokenizer can only read as its unknown token.

    Real LVLM tokenizers (byte-level BPE, SentencePiece with byte fallback) read any text;
    a closed word-level vocabulary, as the embedded shapes model's, maps every word it does
    not know to ``<unk>``: the model then grounds a sentence with holes in it.
    """
    tok = getattr(processor, "tokenizer", processor)
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or not callable(tok):
        return ()
    out = []
    if getattr(tok, "is_fast", False):  # the exact pieces of text read as <unk>
        enc = tok(expr, add_special_tokens=False, return_offsets_mapping=True)
        for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
            if i == unk:
                out.append(expr[a:b])
    else:
        out = [w for w in expr.split() if unk in tok(w, add_special_tokens=False)["input_ids"]]
    return tuple(dict.fromkeys(out))


def known_words(processor, limit: int = 300) -> list[str] | None:
    """The alphabetic words of a tokenizer's vocabulary (for messages about unknown words;
    None when the vocabulary is larger than ``limit``, i.e. an open one)."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    words = sorted(w for w in vocab if w.isalpha())
    return words if len(words) <= limit else None


_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` the adapter of each of its ``model_types``."""
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def registered_model_types() -> list[str]:
    """The ``config.model_type`` values that have an adapter."""
    return sorted(_REGISTRY)


def normalize_expression(expr: str, end: str = ".") -> str:
    """Strip and collapse white space; end the expression with ``end`` (METHOD section 1).

    Raises:
        ExpressionError: The expression is not a string or is empty after stripping.
    """
    if not isinstance(expr, str):
        raise ExpressionError(
            f"the expression must be a string, got {type(expr).__name__}",
            'pass the referring expression as text, e.g. "the man on the right".',
        )
    text = re.sub(r"\s+", " ", expr).strip()
    if not text or not re.search(r"\w", text):
        raise ExpressionError(
            f"the referring expression is empty ({expr!r})",
            'describe the object to find, e.g. "the red circle left of the square".',
        )
    if end and text[-1] not in ".?!":
        text += end
    return text


class Adapter(ABC):
    """Base class of the per-family adapters.

    Args:
        model: The loaded vision-language model.
        processor: Its processor (tokenizer + image processor).
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: PreTrainedModel, processor):
        self.model = model
        self.processor = processor

    # ------------------------------------------------------------------ model facts
    @abstractmethod
    def decoder(self) -> PreTrainedModel:
        """The language model whose attention heads are studied."""

    @property
    def num_layers(self) -> int:
        return int(self.decoder().config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.decoder().config.num_attention_heads)

    @property
    def max_length(self) -> int | None:
        """Longest prompt the decoder accepts, in tokens (None: unknown)."""
        return getattr(self.decoder().config, "max_position_embeddings", None)

    def model_id(self) -> str:
        """The model's id: ``config.minilocal_model_id`` when the model carries one (the
        embedded shapes model: the same id wherever it is installed), else the hub id or
        local path it was loaded from."""
        cfg = self.model.config
        return str(getattr(cfg, "minilocal_model_id", None) or getattr(cfg, "_name_or_path", "")
                   or self.family)

    # ------------------------------------------------------------------ prompt
    def normalize(self, expr: str) -> str:
        """The expression as it goes into the prompt: checked by
        :func:`minilocal.expressions.check_expression` (control characters, no letter or
        digit), :func:`normalize_expression`, then refused if it holds a special token of
        this model (:func:`check_no_special_tokens`).

        Raises:
            ExpressionError: Empty, unreadable, or holding a special token.
        """
        from ..expressions import check_expression

        text = normalize_expression(check_expression(expr))
        check_no_special_tokens(text, self.processor)
        return text

    def unknown_words(self, expr: str) -> tuple[str, ...]:
        """Words of ``expr`` outside this model's vocabulary (:func:`unknown_words`)."""
        return unknown_words(expr, self.processor)

    @abstractmethod
    def build_prompt(self, expr: str) -> str:
        """The prompt string around an already normalised expression."""

    @abstractmethod
    def prepare(self, image: Image.Image, expr: str) -> Prepared:
        """Process one image and expression; locate the image tokens."""

    def forward_kwargs(self) -> dict:
        """Extra arguments for the prefill forward (e.g. only the last logits)."""
        return {"logits_to_keep": 1}

    # ------------------------------------------------------------------ helpers for subclasses
    def check_length(self, input_ids: torch.Tensor, expr: str) -> None:
        """Raise :class:`ExpressionError` when the prompt exceeds the decoder's context."""
        limit = self.max_length
        n = int(input_ids.shape[-1])
        if limit is not None and n > limit:
            raise ExpressionError(
                f"the prompt is {n} tokens long, beyond this model's context of {limit} "
                f"tokens (expression of {len(expr.split())} words)",
                "shorten the referring expression: a few words naming the object and where "
                "it is are enough.",
            )

    def locate_image_tokens(
        self, input_ids: torch.Tensor, image_token_id: int, grid: tuple[int, int], skip: int = 0
    ) -> torch.Tensor:
        """Positions of the image tokens in a [T] or [1, T] prompt, checked against the grid.

        Args:
            input_ids: The tokenized prompt.
            image_token_id: Id of the image placeholder token.
            grid: (h, w) expected.
            skip: Leading image tokens that are not grid cells (e.g. a CLS feature).

        Raises:
            ImageTokensNotFoundError: None found, or not ``h * w`` of them.
        """
        ids = input_ids.reshape(-1)
        positions = torch.nonzero(ids == image_token_id).reshape(-1)[skip:]  # [n]
        h, w = grid
        if positions.numel() == 0:
            raise ImageTokensNotFoundError(
                f"no image tokens (id {image_token_id}) in the prompt of {self.model_id()!r}",
                "pass the image through this model's own processor (AutoProcessor) so that the "
                "image placeholder is expanded; check that the adapter "
                f"({type(self).__name__}) matches the model.",
            )
        if positions.numel() != h * w:
            raise ImageTokensNotFoundError(
                f"{positions.numel()} image tokens in the prompt, but the image grid is "
                f"{h}x{w} = {h * w}",
                "use the processor that was saved with the model; a processor with another "
                "image size or patch size produces a different number of image tokens.",
            )
        return positions

    # ------------------------------------------------------------------ step 1
    def attention(
        self, image: Image.Image, expr: str, method: Method = "capture"
    ) -> tuple[np.ndarray, Prepared]:
        """Last-token attention of every head over the image grid.

        Returns:
            attn: [L, H, h, w] float32 numpy array (softmax weights over all keys, kept at the
            image tokens); ``attn.sum((-1, -2))`` is S_img.
            prepared: The processed inputs, grid and geometry.

        Book: ``book/01_attention.ipynb``.
        """
        prepared = self.prepare(image, expr)
        device = next(self.model.parameters()).device
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in prepared.inputs.items()}
        attn = last_token_attention(
            self.model,
            inputs,
            prepared.positions.to(device),
            self.decoder(),
            method=method,
            forward_kwargs=self.forward_kwargs(),
        )  # [1, L, H, n]
        h, w = prepared.grid
        attn = attn[0].reshape(attn.shape[1], attn.shape[2], h, w)  # [L, H, h, w]
        return attn.cpu().numpy(), prepared


def get_adapter(model: PreTrainedModel, processor, **kwargs) -> Adapter:
    """The adapter for ``model``'s family (looked up by ``config.model_type``).

    Args:
        model: The loaded model.
        processor: Its processor.
        **kwargs: Options of that family's adapter (e.g. ``image_mode``, ``grid_source``).

    Raises:
        ModelNotSupportedError: No adapter is registered for this model type.
    """
    model_type = getattr(model.config, "model_type", None)
    cls = _REGISTRY.get(model_type)
    if cls is None:
        raise ModelNotSupportedError(
            f"no minilocal adapter for model type {model_type!r} "
            f"({type(model).__name__})",
            f"use a supported family ({', '.join(registered_model_types())}) or write an "
            "Adapter subclass (see book/06_your_model.ipynb) and decorate it with "
            "@register_adapter.",
        )
    return cls(model, processor, **kwargs)
