"""Step 4 of the slides: from the chosen heads' maps to a pseudo mask, a hull and a box.

For each chosen head (METHOD section 5):

1. take its attention map on the grid and smooth it with a Gaussian (sigma = 1 cell,
   7-tap kernel);
2. sum the smoothed maps of the chosen heads;
3. threshold the sum at its mean: the cells above it form the pseudo mask;
4. take the convex hull of the foreground cells and its axis-aligned bounding box;
5. map that box from grid units back to image pixels through the processor's geometry.

The box of the convex hull of a set of cells equals their bounding box; the hull is kept
because it is what the slides draw and it is a tighter region for display. A map with no
cell above its mean (uniform, all zero) or with NaN gives an explicit "no foreground"
result (``box is None`` and a ``reason``), never an exception.

Book: ``book/05_grounding.ipynb``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .errors import InputError
from .geometry import Geometry

Head = tuple[int, int]
Component = Literal["all", "largest"]
Threshold = Literal["mean"] | float

_STRUCTURE_8 = np.ones((3, 3), dtype=bool)


def gaussian_smooth(maps: np.ndarray, sigma: float = 1.0, radius: int = 3) -> np.ndarray:
    """Gaussian smoothing of each grid map (a 2 * radius + 1 = 7-tap kernel by default).

    Args:
        maps: [..., h, w] maps; leading axes are smoothed independently.
        sigma: Standard deviation in grid cells; 0 returns the maps unchanged.
        radius: Kernel half-width in cells (3 -> 7 taps).

    Returns:
        [..., h, w] float64 smoothed maps (borders reflected).

    Book: ``book/05_grounding.ipynb``.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if sigma <= 0:
        return maps.copy()
    sig = [0.0] * (maps.ndim - 2) + [sigma, sigma]
    rad = [0] * (maps.ndim - 2) + [radius, radius]
    return ndimage.gaussian_filter(maps, sigma=sig, radius=rad, mode="reflect")


def combine_heads(
    attn: np.ndarray, heads: Sequence[Head], sigma: float = 1.0
) -> np.ndarray:
    """Sum of the smoothed maps of the chosen heads.

    Args:
        attn: [L, H, h, w] last-token attention of one sample.
        heads: The chosen heads as (layer, head) pairs.
        sigma: Gaussian sigma in grid cells (0: no smoothing).

    Returns:
        [h, w] combined map.

    Book: ``book/05_grounding.ipynb``.
    """
    if len(heads) == 0:
        raise InputError("no heads given", "pass the head table's heads, e.g. [(14, 24)].")
    L, H = attn.shape[:2]
    for layer, head in heads:
        if not (0 <= layer < L and 0 <= head < H):
            raise InputError(
                f"head L{layer}H{head} is outside this model's {L} x {H} heads",
                "use heads found for this model (0-based layer and head indices).",
            )
    maps = np.stack([attn[layer, head] for layer, head in heads])  # [k, h, w]
    return gaussian_smooth(maps, sigma).sum(0)  # [h, w]


def pseudo_mask(combined: np.ndarray, threshold: Threshold = "mean") -> np.ndarray:
    """Binary pseudo mask of a combined map.

    Args:
        combined: [h, w] map.
        threshold: "mean" (paper): cells strictly above the map's mean. A float t in (0, 1]
            (variant): cells strictly above t * max of the map.

    Returns:
        [h, w] bool. All False for a uniform or non-finite map.

    Book: ``book/05_grounding.ipynb``.
    """
    combined = np.asarray(combined, dtype=np.float64)
    if not np.isfinite(combined).all():
        return np.zeros(combined.shape, dtype=bool)
    if threshold == "mean":
        cut = combined.mean()
    elif isinstance(threshold, (int, float)) and 0 < float(threshold) <= 1:
        cut = float(threshold) * combined.max()
    else:
        raise InputError(
            f"threshold must be 'mean' or a fraction in (0, 1], got {threshold!r}",
            "pass threshold='mean' (paper) or e.g. threshold=0.5 (half the maximum).",
        )
    return combined > cut


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a grid mask (ties: the first in label order)."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE_8)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]  # [n]
    return labels == (int(np.argmax(sizes)) + 1)


def convex_hull(mask: np.ndarray) -> np.ndarray | None:
    """Convex hull of the foreground cells, as polygon vertices in grid units.

    Each cell (i, j) is the square [j, j+1] x [i, i+1]; the hull is taken over the corners of
    the foreground cells, so one cell gives its square.

    Args:
        mask: [h, w] bool pseudo mask.

    Returns:
        [K, 2] (x, y) vertices in counter-clockwise order, or None for an empty mask.

    Book: ``book/05_grounding.ipynb``.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    corners = np.concatenate(
        [np.stack([cols + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    ).astype(np.float64)  # [4n, 2] (x, y)
    corners = np.unique(corners, axis=0)
    try:
        hull = ConvexHull(corners)
    except QhullError:  # collinear points cannot happen with cell corners; keep a fallback
        x0, y0 = corners.min(0)
        x1, y1 = corners.max(0)
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return corners[hull.vertices]


def hull_to_box(hull: np.ndarray | None) -> np.ndarray | None:
    """Axis-aligned box (xyxy, grid units) of a hull polygon, or None."""
    if hull is None:
        return None
    return np.concatenate([hull.min(0), hull.max(0)])


@dataclass
class Grounding:
    """The result of grounding one expression with the chosen heads.

    Attributes:
        box: [4] xyxy box in image pixels, or None when there is no foreground.
        box_grid: [4] xyxy box in grid units, or None.
        combined: [h, w] sum of the smoothed maps of the chosen heads.
        pseudo_mask: [h, w] bool cells above the threshold (after ``component``).
        hull: [K, 2] convex hull vertices in grid units, or None.
        mask: [H, W] bool pseudo mask upsampled to image pixels (replaced by SAM's mask
            when a SAM refines the box; see :mod:`minilocal.segmentation`).
        heads: The heads used.
        geometry: The grid-to-image map used.
        reason: Why there is no box ("no foreground", "no foreground inside the image"
            when all of it lies in the padding, "attention map is not finite"), or None.
    """

    box: np.ndarray | None
    box_grid: np.ndarray | None
    combined: np.ndarray
    pseudo_mask: np.ndarray
    hull: np.ndarray | None
    mask: np.ndarray
    heads: list[Head]
    geometry: Geometry
    reason: str | None = None
    extras: dict = field(default_factory=dict)


def ground(
    attn: np.ndarray,
    heads: Sequence[Head],
    geometry: Geometry,
    *,
    sigma: float = 1.0,
    threshold: Threshold = "mean",
    component: Component = "all",
) -> Grounding:
    """Box and pseudo mask of one expression from its last-token attention.

    Args:
        attn: [L, H, h, w] last-token attention of one sample.
        heads: Chosen (layer, head) pairs (a head table's ``heads``).
        geometry: Grid-to-image map of this image (from the adapter's ``Prepared``).
        sigma: Gaussian sigma in grid cells (METHOD default 1).
        threshold: "mean" (paper) or a fraction of the max (variant).
        component: "all" foreground cells (public code, default) or the "largest"
            8-connected component only (variant).

    Returns:
        A :class:`Grounding`; ``box`` is None (with ``reason``) when nothing stands out.

    Book: ``book/05_grounding.ipynb``.
    """
    attn = np.asarray(attn)
    if attn.ndim != 4:
        raise InputError(
            f"attn must be [L, H, h, w], got shape {attn.shape}",
            "pass one sample's attention as returned by Adapter.attention (4 axes).",
        )
    if tuple(attn.shape[2:]) != tuple(geometry.grid):
        raise InputError(
            f"attn grid {attn.shape[2:]} != geometry grid {geometry.grid}",
            "use the geometry of the same Prepared sample the attention came from.",
        )
    if component not in ("all", "largest"):
        raise InputError(
            f"component must be 'all' or 'largest', got {component!r}",
            "pass component='all' (public code) or component='largest'.",
        )
    heads = [(int(layer), int(head)) for layer, head in heads]
    combined = combine_heads(attn, heads, sigma)  # [h, w]
    reason = None
    if not np.isfinite(combined).all():
        reason = "attention map is not finite (NaN or inf in the chosen heads' maps)"
    mask_grid = pseudo_mask(combined, threshold)
    if component == "largest" and mask_grid.any():
        mask_grid = largest_component(mask_grid)
    hull = convex_hull(mask_grid)
    box_grid = hull_to_box(hull)
    if box_grid is None:
        reason = reason or "no foreground: no cell of the combined map is above the threshold"
        box = None
    else:
        box = geometry.grid_box_to_image(box_grid)
        if not (box[2] > box[0] and box[3] > box[1]):
            # Every foreground cell lies in the band that the processor added around the
            # picture (pad-to-square): clipped to the image the box has no area. The item
            # gets no box (a miss in Acc@0.5), as a map with no foreground does.
            reason = reason or ("no foreground inside the image: every cell above the "
                                "threshold lies in the padding added around the picture")
            box = None
    return Grounding(
        box=box,
        box_grid=box_grid,
        combined=combined,
        pseudo_mask=mask_grid,
        hull=hull,
        mask=geometry.mask_to_image(mask_grid),
        heads=heads,
        geometry=geometry,
        reason=reason,
    )
