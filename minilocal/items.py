"""One item format for every dataset: the shapes world, RefCOCO, RefCOCO+, RefCOCOg.

An item is one referring expression with its image, ground-truth box (xyxy pixels) and
mask. Images and masks load on demand, so a dataset of 100k expressions costs little
memory until its items are used.

Book: ``book/05_grounding.ipynb`` (evaluation data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class GroundingItem:
    """One referring expression and its referent.

    Attributes:
        item_id: Unique, stable id (used in caches, head tables and prediction files),
            e.g. ``"refcoco/unc/val/ref1234/sent5678"`` or ``"shapes/heldout/000042"``.
        expr: The referring expression.
        box: [4] float64 xyxy ground-truth box in image pixels.
        image_id: Id of the image (items of one image share it).
        dataset: Dataset name ("refcoco", "refcoco+", "refcocog", "shapes", ...).
        split: Split name ("train", "val", "testA", "selection", "heldout", ...).
        meta: Anything else the source gives (ann_id, ref_id, category, ...).
    """

    item_id: str
    expr: str
    box: np.ndarray
    image_id: str
    dataset: str
    split: str
    load_image: Callable[[], Image.Image] = field(repr=False)
    load_mask: Callable[[], np.ndarray | None] = field(repr=False, default=lambda: None)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        """The RGB image (loaded on each access; keep a reference if used twice)."""
        return self.load_image()

    @property
    def mask(self) -> np.ndarray | None:
        """[H, W] bool ground-truth mask, or None where the source has none."""
        return self.load_mask()


class GroundingDataset(Sequence):
    """A list of :class:`GroundingItem` with seeded sampling.

    Args:
        items: The items, in a fixed order.
        name: Dataset name for display and provenance.
    """

    def __init__(self, items: Sequence[GroundingItem], name: str = ""):
        # a lazy sequence (shapes: each item rendered on first access) stays lazy
        self.items = items if getattr(items, "lazy", False) else list(items)
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return GroundingDataset(self.items[i], self.name)
        return self.items[i]

    def __repr__(self) -> str:
        return f"GroundingDataset({self.name!r}, {len(self)} items)"

    @property
    def ids(self) -> list[str]:
        return [it.item_id for it in self.items]

    def sample(self, n: int, seed: int) -> GroundingDataset:
        """``n`` items drawn without replacement by ``numpy.random.default_rng(seed)``.

        The same (n, seed) always gives the same items in the same order; n larger than
        the dataset returns a permutation of all of it.
        """
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(self.items))[: min(n, len(self.items))]
        return GroundingDataset([self.items[i] for i in idx], self.name)
