"""Step 2 of the slides: the two criteria that pick localization heads.

Criterion 1, **S_img and the elbow**. For every head, ``s_img`` is the attention mass that
the last text token puts on the image (the sum of its map over the grid, a number in
[0, 1]). Sorted in ascending order, the S_img values of all heads form a curve that stays
low for most heads and rises sharply for a few; heads at or after the point of maximum
curvature of that curve (the *elbow*) pass.

Criterion 2, **spatial entropy**. A head's map is binarized, split into connected
components C_1..C_n, and

    entropy = - sum_i P(C_i) log P(C_i)         (natural log)

is low when the foreground is one compact blob and high when it is scattered.

Where the paper and its public code differ, both readings are here as named options, the
paper's being the default (see ``METHOD.md`` sections 2 and 3):

* elbow: ``"mean"`` (paper: one threshold from the S_img curve averaged over the samples)
  or ``"per_sample"`` (public code: one threshold per sample);
* entropy: ``"paper"`` (binarize A > mean(A), P = component SIZE / total size) or
  ``"public_code"`` (B = relu(A - c mean(A)), foreground B > 0.001, P = component MASS of B /
  total mass of B);
* filters seen in the public code, off by default: skip layers 0 and 1, and drop heads whose
  map has a value > 0.05 in its last grid row.

Book: ``book/02_s_img_elbow.ipynb`` (S_img, elbow), ``book/03_spatial_entropy.ipynb``
(spatial entropy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from .errors import InputError

ElbowMode = Literal["mean", "per_sample"]
EntropyMethod = Literal["paper", "public_code"]
Connectivity = Literal[4, 8]

#: Keyword arguments of :func:`passes_s_img` that reproduce the public code's filters.
PUBLIC_CODE_FILTERS: dict = {"skip_layers": (0, 1), "last_row_limit": 0.05}

# A straight line has all its distances to the chord at rounding-noise level; below this
# (on the [0, 1] x [0, 1] normalised curve) there is no bend and no elbow.
_FLAT_TOL = 1e-12


# ----------------------------------------------------------------------------------------
# Criterion 1: S_img and the elbow
# ----------------------------------------------------------------------------------------


def s_img(attn: np.ndarray) -> np.ndarray:
    """Attention mass on the image: the sum of each map over its grid.

    Args:
        attn: [..., h, w] attention maps, e.g. [L, H, h, w] for one sample or
            [N, L, H, h, w] for N samples.

    Returns:
        [...] float64: S_img per map (in [0, 1] for softmax attention).

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    a = np.asarray(attn)
    if a.ndim < 2:
        raise InputError(
            f"s_img needs maps of shape [..., h, w], got shape {a.shape}",
            "pass attention maps with the grid as the last two axes, e.g. attn [L, H, h, w].",
        )
    return a.sum(axis=(-2, -1), dtype=np.float64)


def find_elbow(values: Sequence[float] | np.ndarray) -> int:
    """Index of the elbow ("maximum curvature") of the ascending-sorted curve of ``values``.

    The values are sorted in ascending order and the curve (i, v_i) is normalised to
    [0, 1] on both axes. The elbow is the point with the largest perpendicular distance to
    the chord from the first to the last point; after normalisation the chord is y = x and
    the distance is |x_i - y_i| / sqrt(2). This is Kneedle's difference-curve maximum on
    sorted data.

    Degenerate input, defined so that nothing is filtered out: fewer than 3 values, a flat
    curve (all values equal) or a straight line (no bend) have no elbow and return 0, the
    index of the smallest value. Ties between equally distant points go to the first one.

    Args:
        values: [n] numbers (any order; any shape is flattened).

    Returns:
        Index into ``np.sort(values)`` of the elbow.

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())  # [n] ascending
    if v.size == 0:
        raise InputError("find_elbow got no values", "pass the S_img values of at least one head.")
    if not np.isfinite(v).all():
        raise InputError(
            "find_elbow got NaN or infinite values",
            "check the attention maps for NaN (a model run in float16 can overflow; use "
            "float32 or bfloat16).",
        )
    n = v.size
    if n < 3 or v[-1] == v[0]:
        return 0
    # Distance to the chord, unscaled: |i (v_last - v_first) - (n - 1)(v_i - v_first)|, i.e.
    # (n - 1)(v_last - v_first) sqrt(2) times the normalised distance |x_i - y_i| / sqrt(2).
    # Scaling both axes to [0, 1] first would add rounding that breaks exact ties (issue 15:
    # [0, 0, 1, 1] gave index 2); the first of the points within a relative 1e-12 of the
    # largest distance is the elbow.
    span = v[-1] - v[0]
    cross = np.abs(np.arange(n, dtype=np.float64) * span - (n - 1) * (v - v[0]))  # [n]
    dist = cross / ((n - 1) * span * np.sqrt(2.0))  # [n] normalised distance to y = x
    i = int(np.flatnonzero(cross >= cross.max() * (1 - 1e-12))[0])
    return 0 if dist[i] <= _FLAT_TOL else i


def elbow_threshold(s_img_values: Sequence[float] | np.ndarray) -> float:
    """The S_img value at the elbow: heads with S_img >= it pass criterion 1.

    Args:
        s_img_values: [n] S_img of the heads (any order; any shape is flattened).

    Returns:
        The sorted value at :func:`find_elbow` (the smallest value when there is no elbow).

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    v = np.sort(np.asarray(s_img_values, dtype=np.float64).ravel())
    return float(v[find_elbow(v)])


def _check_s_img(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 3:
        raise InputError(
            f"s_img must have shape [N, L, H] (samples, layers, heads), got {s.shape}",
            "stack the per-sample [L, H] arrays (np.stack); for one sample use s_img[None].",
        )
    return s


def _thresholds_mean(s: np.ndarray) -> np.ndarray:
    tau = elbow_threshold(s.mean(axis=0))  # one curve: S_img averaged over the N samples
    return np.full(s.shape[0], tau)


def _thresholds_per_sample(s: np.ndarray) -> np.ndarray:
    return np.array([elbow_threshold(si) for si in s], dtype=np.float64)


_THRESHOLDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _thresholds_mean,
    "per_sample": _thresholds_per_sample,
}


def _lookup(table: dict, name, option: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown {option} {name!r}", f"use one of {sorted(table, key=str)}."
        ) from None


def s_img_thresholds(s_img: np.ndarray, mode: ElbowMode = "mean") -> np.ndarray:
    """Elbow threshold tau of each sample.

    Args:
        s_img: [N, L, H] S_img of N samples.
        mode: ``"mean"`` (paper): one tau from the curve of S_img averaged over the N
            samples, the same for all; ``"per_sample"`` (public code): tau from each
            sample's own curve.

    Returns:
        [N] float64 thresholds (all equal in ``"mean"`` mode).

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    s = _check_s_img(s_img)
    return _lookup(_THRESHOLDS, mode, "elbow mode")(s)


def last_row_max(attn: np.ndarray) -> np.ndarray:
    """Largest value in the last grid row of each map (for the public code's filter).

    Args:
        attn: [..., h, w] attention maps.

    Returns:
        [...] the max over the w cells of row h - 1.

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    a = np.asarray(attn)
    if a.ndim < 2:
        raise InputError(
            f"last_row_max needs maps of shape [..., h, w], got shape {a.shape}",
            "pass attention maps with the grid as the last two axes, e.g. attn [L, H, h, w].",
        )
    return a[..., -1, :].max(axis=-1)


def passes_s_img(
    s_img: np.ndarray,
    mode: ElbowMode = "mean",
    *,
    skip_layers: Sequence[int] = (),
    last_row: np.ndarray | None = None,
    last_row_limit: float | None = None,
) -> np.ndarray:
    """Which heads pass criterion 1 (S_img >= the elbow threshold), per sample.

    The threshold comes from all heads; the optional filters (public code, off by default)
    then remove heads without changing it. ``**PUBLIC_CODE_FILTERS`` turns both on.

    Args:
        s_img: [N, L, H] S_img of N samples.
        mode: ``"mean"`` (paper) or ``"per_sample"`` (public code); see
            :func:`s_img_thresholds`.
        skip_layers: Layers whose heads never pass (public code: ``(0, 1)``).
        last_row: [N, L, H] :func:`last_row_max` of the maps; needed with ``last_row_limit``.
        last_row_limit: Drop heads whose map has a value > this in its last grid row
            (public code: 0.05). None: no such filter.

    Returns:
        [N, L, H] bool, True where the head passes (in ``"mean"`` mode the same [L, H]
        mask for every sample, broadcast).

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    s = _check_s_img(s_img)
    tau = s_img_thresholds(s, mode)  # [N]
    if mode == "mean":
        mask = s.mean(axis=0) >= tau[0]  # [L, H] the averaged curve decides for all
        mask = np.broadcast_to(mask, s.shape).copy()  # [N, L, H]
    else:
        mask = s >= tau[:, None, None]  # [N, L, H]
    L = s.shape[1]
    for layer in skip_layers:
        if not -L <= int(layer) < L:
            raise InputError(
                f"skip_layers holds layer {layer}, but the model has {L} layers",
                f"use layer indices in 0..{L - 1}.",
            )
        mask[:, int(layer)] = False
    if last_row_limit is not None:
        if last_row is None:
            raise InputError(
                "last_row_limit is set but last_row is missing",
                "pass last_row=last_row_max(attn) ([N, L, H]) or leave last_row_limit=None.",
            )
        lr = np.asarray(last_row)
        if lr.shape != s.shape:
            raise InputError(
                f"last_row has shape {lr.shape}, s_img has {s.shape}",
                "compute both from the same attention maps: s_img(attn), last_row_max(attn).",
            )
        mask &= ~(lr > last_row_limit)
    return mask


# ----------------------------------------------------------------------------------------
# Criterion 2: spatial entropy
# ----------------------------------------------------------------------------------------

_STRUCTURE_2D: dict[int, np.ndarray] = {
    4: ndimage.generate_binary_structure(2, 1),  # edges only
    8: ndimage.generate_binary_structure(2, 2),  # edges and corners
}


def _structure(connectivity: int, ndim: int) -> np.ndarray:
    s2 = _lookup(_STRUCTURE_2D, connectivity, "connectivity")
    if ndim == 2:
        return s2
    s3 = np.zeros((3, 3, 3), dtype=bool)  # [map, row, col]
    s3[1] = s2  # neighbours only within the same map: maps never connect to each other
    return s3


def _paper_foreground(a: np.ndarray, mean: np.ndarray, c: float, fg_threshold: float):
    """Paper: cells above the grid mean; each cell weighs 1 (P = component size)."""
    fg = a > mean[..., None, None]
    return fg, fg.astype(np.float64), None


def _public_foreground(a: np.ndarray, mean: np.ndarray, c: float, fg_threshold: float):
    """Public code: B = relu(A - c mean); cells with B > fg_threshold; weight = mass of B."""
    b = np.maximum(a - c * mean[..., None, None], 0.0)
    fg = b > fg_threshold
    return fg, b, b.sum(axis=(-2, -1))  # total mass of B over the WHOLE grid


_FOREGROUND = {"paper": _paper_foreground, "public_code": _public_foreground}


def _as_maps(attn: np.ndarray) -> np.ndarray:
    a = np.asarray(attn)
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(
            f"spatial entropy needs maps of shape [..., h, w] with h, w >= 1, got {a.shape}",
            "pass attention maps with the grid as the last two axes, e.g. attn [L, H, h, w].",
        )
    return a.astype(np.float64)


def _grid_mean(a: np.ndarray) -> np.ndarray:
    """[..., h, w] -> [...] mean over the grid, summed the same way for one map or many."""
    return a.reshape(*a.shape[:-2], -1).mean(axis=-1)


def _valid(a: np.ndarray) -> np.ndarray:
    """[..., h, w] -> [...] False for maps with NaN/inf or constant (incl. all-zero)."""
    finite = np.isfinite(a).all(axis=(-2, -1))
    with np.errstate(invalid="ignore"):
        varies = a.max(axis=(-2, -1)) > a.min(axis=(-2, -1))
    return finite & varies


def spatial_entropy(
    attn: np.ndarray,
    method: EntropyMethod = "paper",
    *,
    c: float = 1.0,
    fg_threshold: float = 1e-3,
    connectivity: Connectivity = 8,
) -> np.ndarray:
    """Spatial entropy of every map, all maps labelled in one call.

    The maps are stacked as [M, h, w] and labelled by a single ``scipy.ndimage.label`` call
    with a 3-D structuring element that connects cells only within a map; component sizes
    and masses are then gathered with ``np.bincount``. No Python loop over heads.

    ``"paper"``: foreground = A > mean(A) over the grid; P(C_i) = |C_i| / sum_j |C_j|.
    ``"public_code"``: B = relu(A - c * mean(A)); foreground = B > ``fg_threshold``;
    P(C_i) = (sum of B over C_i) / (sum of B over the whole grid), as the public code does
    (so the P need not sum to 1). Both: H = -sum_i P(C_i) log P(C_i), natural log.

    Defined cases: one component -> 0.0; no foreground component -> +inf (this differs from
    the public code, which returns 0 when B has mass but no cell passes 0.001); a map with
    NaN or inf, or a constant map (all-zero or uniform) -> +inf. ``"paper"`` is invariant
    to scaling a map by a positive constant; ``"public_code"`` is not (absolute
    ``fg_threshold``).

    Args:
        attn: [..., h, w] maps, e.g. [L, H, h, w] or [N, L, H, h, w].
        method: ``"paper"`` (default) or ``"public_code"``.
        c: Public code only: the factor of the mean subtracted (1 in the original code, 2 in
            later versions).
        fg_threshold: Public code only: B must exceed this to be foreground.
        connectivity: 8 (default: edges and corners) or 4 (edges only).

    Returns:
        [...] float64 entropy per map (>= 0, or +inf).

    Book: ``book/03_spatial_entropy.ipynb``.
    """
    foreground = _lookup(_FOREGROUND, method, "entropy method")
    a = _as_maps(attn)
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    a = a.reshape(-1, h, w)  # [M, h, w]
    m = a.shape[0]
    if m == 0:
        return np.zeros(lead, dtype=np.float64)
    valid = _valid(a)  # [M]
    a = np.where(valid[:, None, None], a, 0.0)  # invalid maps: no foreground, no NaN warnings
    fg, weight, total = foreground(a, _grid_mean(a), c, fg_threshold)  # [M, h, w] x2, [M]|None
    labels, n = ndimage.label(fg, structure=_structure(connectivity, 3))  # [M, h, w], n comps
    lab = labels.ravel()  # [M*h*w]
    comp_map = np.zeros(n + 1, dtype=np.intp)  # component -> the map it lies in
    comp_map[lab] = np.repeat(np.arange(m), h * w)
    comp_map = comp_map[1:]  # [n] (label 0 is the background)
    comp_w = np.bincount(lab, weights=weight.ravel(), minlength=n + 1)[1:]  # [n] size | mass
    if total is None:  # paper: normalise by the foreground size of the map
        total = np.bincount(comp_map, weights=comp_w, minlength=m)  # [M]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(comp_w / total[comp_map], 1.0)  # [n] P(C_i); rounding can exceed 1
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)  # [n]
    ent = np.bincount(comp_map, weights=terms, minlength=m) + 0.0  # [M]; +0.0 turns -0 to 0
    n_comp = np.bincount(comp_map, minlength=m)  # [M]
    ent[(n_comp == 0) | ~valid] = np.inf
    return ent.reshape(lead)


@dataclass
class EntropyComponents:
    """The steps of :func:`spatial_entropy` for one map, for figures and exercises.

    Attributes:
        values: [h, w] the map that is thresholded (A for ``"paper"``, B = relu(A - c
            mean) for ``"public_code"``).
        threshold: Cells of ``values`` strictly above this are foreground (mean(A) for
            ``"paper"``, ``fg_threshold`` for ``"public_code"``).
        foreground: [h, w] bool binary map.
        labels: [h, w] int component label per cell (0 = background, 1..n in raster order).
        sizes: [n] number of cells per component.
        weights: [n] P(C_i) per component.
        entropy: -sum P log P (+inf without foreground, for NaN or constant maps).
    """

    values: np.ndarray
    threshold: float
    foreground: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    weights: np.ndarray
    entropy: float

    @property
    def n_components(self) -> int:
        return int(self.sizes.size)


def entropy_components(
    map2d: np.ndarray,
    method: EntropyMethod = "paper",
    *,
    c: float = 1.0,
    fg_threshold: float = 1e-3,
    connectivity: Connectivity = 8,
) -> EntropyComponents:
    """Spatial entropy of ONE map, step by step (binary map, labels, P(C_i), entropy).

    Written plainly, one map at a time; :func:`spatial_entropy_loop` runs it over many maps
    and is the reference that the vectorized :func:`spatial_entropy` is tested against.

    Args:
        map2d: [h, w] one head's map.
        method, c, fg_threshold, connectivity: As in :func:`spatial_entropy`.

    Returns:
        An :class:`EntropyComponents`; its ``entropy`` equals ``spatial_entropy(map2d, ...)``.

    Book: ``book/03_spatial_entropy.ipynb``.
    """
    _lookup(_FOREGROUND, method, "entropy method")
    a = _as_maps(map2d)
    if a.ndim != 2:
        raise InputError(
            f"entropy_components takes one map [h, w], got shape {a.shape}",
            "index one head first, e.g. attn[14, 24]; use spatial_entropy for many maps.",
        )
    structure = _structure(connectivity, 2)
    empty = np.zeros(0)
    if not (np.isfinite(a).all() and a.max() > a.min()):  # NaN/inf, uniform or all-zero
        zeros = np.zeros(a.shape, dtype=bool)
        return EntropyComponents(
            a, float("nan"), zeros, zeros.astype(np.int32), empty.astype(int), empty, np.inf
        )
    mean = float(_grid_mean(a))
    if method == "paper":
        values, threshold = a, mean
    else:
        values, threshold = np.maximum(a - c * mean, 0.0), float(fg_threshold)
    foreground = values > threshold
    labels, n = ndimage.label(foreground, structure=structure)
    sizes = np.array([(labels == i).sum() for i in range(1, n + 1)], dtype=int)
    if method == "paper":
        weights = sizes / sizes.sum() if n else empty
    else:
        mass = np.array([values[labels == i].sum() for i in range(1, n + 1)])
        weights = np.minimum(mass / values.sum(), 1.0) if n else empty  # rounding: P <= 1
    entropy = float(-sum(p * np.log(p) for p in weights if p > 0)) + 0.0 if n else np.inf
    return EntropyComponents(values, threshold, foreground, labels, sizes, weights, entropy)


def spatial_entropy_loop(
    attn: np.ndarray,
    method: EntropyMethod = "paper",
    *,
    c: float = 1.0,
    fg_threshold: float = 1e-3,
    connectivity: Connectivity = 8,
) -> np.ndarray:
    """Reference: :func:`entropy_components` on each map in a Python loop (slow; for tests
    and for the benchmark against :func:`spatial_entropy`).

    Args:
        attn: [..., h, w] maps.
        method, c, fg_threshold, connectivity: As in :func:`spatial_entropy`.

    Returns:
        [...] float64 entropy per map, equal to :func:`spatial_entropy`.

    Book: ``book/03_spatial_entropy.ipynb``.
    """
    a = _as_maps(attn)
    lead = a.shape[:-2]
    flat = a.reshape(-1, *a.shape[-2:])  # [M, h, w]
    out = [
        entropy_components(
            m2, method, c=c, fg_threshold=fg_threshold, connectivity=connectivity
        ).entropy
        for m2 in flat
    ]
    return np.array(out, dtype=np.float64).reshape(lead)
