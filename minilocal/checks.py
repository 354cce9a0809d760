"""Checkers for the course exercises: run a student's function on known cases.

Each ``check_<name>(fn)`` calls ``fn`` on a few hand-built cases (chosen so that the usual
mistakes give a wrong answer) and on one stored realistic case, prints every case that
failed with the expected and the obtained value, and ends with one summary line::

    >>> from minilocal import checks
    >>> checks.check_spatial_entropy(my_spatial_entropy)
    spatial_entropy: 8/8 cases passed

The expected values are STORED in ``minilocal/checks_data/`` (``expected.json`` for every
case, ``realistic.npz`` for the inputs of the realistic cases). They were computed once from
the package's reference implementation by ``scripts/make_checks_data.py``; a test recomputes
them and fails on any drift. So a checker never calls the reference implementation and works
where the solutions are withheld.

A checker never raises because the student's function is wrong (an exception inside ``fn``
counts as a failed case), so an exercise notebook with unsolved stubs still runs from top to
bottom. With ``strict=True``, or the environment variable ``MINILOCAL_STRICT_CHECKS=1`` (set
by CI for the book build and the solution notebooks), a checker raises :class:`CheckFailed`
after its report when any case failed.

The student's function receives copies of the inputs, so mutating them changes nothing.

Book: every chapter's exercises (``book/00_visual_grounding.ipynb`` onwards).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

#: Environment variable that makes every checker strict (raise on any failed case).
STRICT_ENV = "MINILOCAL_STRICT_CHECKS"

_DATA_PACKAGE = "minilocal.checks_data"
EXPECTED_FILE = "expected.json"
REALISTIC_FILE = "realistic.npz"


class CheckFailed(AssertionError):
    """Raised by a strict checker when at least one case failed."""


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------


@dataclass
class CaseFailure:
    """One failed case.

    Attributes:
        case: The case's name, e.g. ``"two blobs"``.
        expected: What the reference gives (as text).
        got: What the student's function gave (as text), or the exception it raised.
        why: Which comparison failed (shape, value, type...).

    Book: every chapter's exercises.
    """

    case: str
    expected: str
    got: str
    why: str = ""

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"  FAIL {self.case}{why}\n       expected: {self.expected}\n       got:      {self.got}"


@dataclass
class CheckResult:
    """What a checker found.

    Attributes:
        name: The exercise, e.g. ``"spatial_entropy"``.
        passed: Number of cases passed.
        total: Number of cases run.
        failures: One :class:`CaseFailure` per failed case, in case order.

    Book: every chapter's exercises.
    """

    name: str
    passed: int
    total: int
    failures: list[CaseFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every case passed."""
        return self.passed == self.total

    def summary(self) -> str:
        """The one summary line, e.g. ``"spatial_entropy: 5/5 cases passed"``."""
        return f"{self.name}: {self.passed}/{self.total} cases passed"

    def report(self) -> str:
        """Every failure, then the summary line."""
        return "\n".join([str(f) for f in self.failures] + [self.summary()])

    def __repr__(self) -> str:
        return f"CheckResult({self.summary()!r})"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the checker has already printed its report."""


# ----------------------------------------------------------------------------------------
# Stored data
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _expected_all() -> dict:
    text = resources.files(_DATA_PACKAGE).joinpath(EXPECTED_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _realistic_all() -> dict[str, np.ndarray]:
    with resources.files(_DATA_PACKAGE).joinpath(REALISTIC_FILE).open("rb") as f:
        with np.load(f, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def realistic_inputs(name: str) -> dict[str, np.ndarray]:
    """The stored inputs of checker ``name``'s realistic case, by argument name.

    Book: ``book/README.md`` (authors: adding a checker).
    """
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in _realistic_all().items() if k.startswith(prefix)}


def decode_expected(value: Any) -> Any:
    """Expected values as stored in JSON -> Python/NumPy (``"inf"``, ``"nan"`` and
    ``{"array": ..., "dtype": ...}`` are decoded; ``None`` stays ``None``).

    Book: ``book/README.md`` (authors: adding a checker).
    """
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict) and "array" in value:
        return np.array(_decode_nested(value["array"]), dtype=value["dtype"]).reshape(
            value["shape"]
        )
    return value


def _decode_nested(x):
    if isinstance(x, list):
        return [_decode_nested(v) for v in x]
    if isinstance(x, str):
        return float(x)
    return x


def encode_expected(value: Any) -> Any:
    """Inverse of :func:`decode_expected` (used by ``scripts/make_checks_data.py``).

    Book: ``book/README.md`` (authors: adding a checker).
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    arr = np.asarray(value)
    enc = arr.tolist()
    if arr.dtype.kind == "f":
        enc = _encode_nested(enc)
    return {"array": enc, "dtype": str(arr.dtype), "shape": list(arr.shape)}


def _encode_nested(x):
    if isinstance(x, list):
        return [_encode_nested(v) for v in x]
    return x if math.isfinite(x) else str(x)


# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------


@dataclass
class Case:
    """One case: a name and the arguments for the student's function (its answer is stored
    under the name).

    Book: ``book/README.md`` (authors: adding a checker).
    """

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


#: Every checker's cases, by checker name: filled in below by ``_cases`` functions.
CASE_BUILDERS: dict[str, Callable[[], list[Case]]] = {}


def _cases(name: str):
    def register(fn: Callable[[], list[Case]]):
        CASE_BUILDERS[name] = fn
        return fn

    return register


def cases(name: str) -> list[Case]:
    """The cases of checker ``name`` (hand-built ones first, then the realistic one).

    Book: ``book/README.md`` (authors: adding a checker).
    """
    try:
        return CASE_BUILDERS[name]()
    except KeyError:
        raise KeyError(f"no checker named {name!r}; known: {sorted(CASE_BUILDERS)}") from None


# -- helpers to build inputs --------------------------------------------------------------


def _causal_attention(rng: np.random.Generator, heads: int, T: int) -> np.ndarray:
    """[1, H, T, T] row-stochastic causal attention (what eager attention returns)."""
    logits = rng.normal(size=(1, heads, T, T))
    logits[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] = -np.inf
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def _attention_case(seed: int, layers: int, heads: int, T: int, positions: list[int]):
    """Attention tuple with random rows; the LAST row is random too (expected by slicing)."""
    import torch

    rng = np.random.default_rng(seed)
    attentions = tuple(torch.from_numpy(_causal_attention(rng, heads, T)) for _ in range(layers))
    return attentions, torch.tensor(positions, dtype=torch.long)


def _blob_map(h: int, w: int, cells: Iterable[tuple[int, int]], value: float = 1.0,
              background: float = 0.0) -> np.ndarray:
    m = np.full((h, w), background, dtype=np.float64)
    for r, c in cells:
        m[r, c] = value
    return m


# -- step 1: last-token attention ---------------------------------------------------------


@_cases("last_token_attention")
def _cases_last_token_attention() -> list[Case]:
    out = []
    att, pos = _attention_case(1, layers=1, heads=2, T=9, positions=[3, 4, 5, 6])
    out.append(Case("2x2 grid after 3 text tokens", (att, pos, (2, 2))))
    att, pos = _attention_case(2, layers=2, heads=1, T=10, positions=[1, 2, 3, 4, 5, 6])
    out.append(Case("2x3 grid (rows, columns), two layers", (att, pos, (2, 3))))
    att, pos = _attention_case(3, layers=2, heads=3, T=9, positions=[1, 2, 4, 5])
    out.append(Case("image tokens with a row separator between rows", (att, pos, (2, 2))))
    att, pos = _attention_case(4, layers=3, heads=4, T=14, positions=list(range(2, 11)))
    out.append(Case("3 layers x 4 heads, 3x3 grid", (att, pos, (3, 3))))
    r = realistic_inputs("last_token_attention")
    import torch

    att = tuple(torch.from_numpy(a) for a in r["attentions"])  # stored [L, 1, H, T, T]
    pos = torch.from_numpy(r["positions"])
    out.append(Case("realistic: a tiny random LLaVA, eager attention",
                    (att, pos, tuple(int(v) for v in r["grid"]))))
    return out


# -- step 2: S_img, elbow, spatial entropy -------------------------------------------------


@_cases("s_img")
def _cases_s_img() -> list[Case]:
    T = 8
    pos = np.arange(2, 6)
    uniform = np.full((1, 1, T), 1.0 / T)
    text = np.zeros((1, 1, T))
    text[..., [0, 1, 6, 7]] = 0.25
    image = np.zeros((1, 1, T))
    image[..., pos] = 0.25
    rng = np.random.default_rng(7)
    mixed = rng.dirichlet(np.ones(11), size=(2, 3))  # [2, 3, 11]
    r = realistic_inputs("s_img")
    return [
        Case("uniform over 8 keys, 4 of them image tokens", (uniform, pos)),
        Case("all attention on text tokens", (text, pos)),
        Case("all attention on image tokens", (image, pos)),
        Case("2 layers x 3 heads, image tokens not contiguous",
             (mixed, np.array([1, 2, 3, 5, 6, 7]))),
        Case("realistic: a tiny random LLaVA's last rows", (r["rows"], r["positions"])),
    ]


@_cases("find_elbow")
def _cases_find_elbow() -> list[Case]:
    knee = np.array([0.01, 0.011, 0.012, 0.014, 0.015, 0.017, 0.02, 0.022, 0.025, 0.03,
                     0.04, 0.06, 0.2, 0.5, 0.8, 0.95])
    rng = np.random.default_rng(3)
    r = realistic_inputs("find_elbow")
    return [
        Case("sorted curve with a clear bend", (knee,)),
        Case("same values, unsorted", (rng.permutation(knee),)),
        Case("values in the thousands", (np.array([1, 2, 3, 5, 8, 40, 400, 3000.0]),)),
        Case("flat curve (no elbow: index 0)", (np.full(10, 0.3),)),
        Case("straight line (no elbow: index 0)", (np.linspace(0.1, 0.9, 9),)),
        Case("two values (no elbow: index 0)", (np.array([0.2, 0.7]),)),
        Case("realistic: mean S_img of 6 x 8 heads", (r["values"],)),
    ]


@_cases("spatial_entropy")
def _cases_spatial_entropy() -> list[Case]:
    r = realistic_inputs("spatial_entropy")
    return [
        Case("one blob", (_blob_map(6, 6, [(1, 1), (1, 2), (2, 1), (2, 2)]),)),
        Case("two blobs of equal size", (_blob_map(6, 6, [(0, 0), (0, 1), (4, 4), (4, 5)]),)),
        Case("two blobs of sizes 1 and 3",
             (_blob_map(6, 6, [(0, 0), (3, 3), (3, 4), (4, 3)]),)),
        Case("cells touching at a corner (8-connectivity: one component)",
             (_blob_map(6, 6, [(1, 1), (2, 2), (3, 3)]),)),
        Case("two blobs of equal size, different attention mass",
             (_blob_map(6, 6, [(0, 0), (0, 1)], 9.0)
              + _blob_map(6, 6, [(4, 4), (4, 5)], 3.0),)),
        Case("uniform map (no foreground)", (np.full((6, 6), 1 / 36),)),
        Case("empty map (all zero)", (np.zeros((6, 6)),)),
        Case("realistic: one head's 12 x 12 map", (r["map"],)),
    ]


# -- step 3: selection frequency ---------------------------------------------------------


@_cases("selection_frequency")
def _cases_selection_frequency() -> list[Case]:
    e1 = np.array([[[0.5, 0.1, 0.9], [0.3, 0.2, 0.7]]])  # [1, 2, 3]
    p_all = np.ones_like(e1, dtype=bool)
    p_some = p_all.copy()
    p_some[0, 0, 1] = False  # the lowest-entropy head fails criterion 1
    e_inf = np.array([[[np.inf, 0.4, np.inf], [np.inf, np.inf, 0.1]]])
    e_tie = np.zeros((1, 2, 3))
    rng = np.random.default_rng(11)
    e3 = rng.uniform(0, 2, size=(3, 2, 3))
    e3[1, 0, 0] = np.inf
    p3 = rng.uniform(size=(3, 2, 3)) < 0.8
    r = realistic_inputs("selection_frequency")
    return [
        Case("one sample, top 2", (e1, p_all), {"top": 2}),
        Case("a head that fails criterion 1 is never counted", (e1, p_some), {"top": 2}),
        Case("infinite entropy is never selected (fewer than top candidates)",
             (e_inf, np.ones_like(e_inf, dtype=bool)), {"top": 3}),
        Case("ties broken by (layer, head)", (e_tie, np.ones_like(e_tie, dtype=bool)),
             {"top": 2}),
        Case("three samples, in percent", (e3, p3), {"top": 2}),
        Case("realistic: 20 samples x 6 x 8 heads, top 10",
             (r["entropy"], r["passing"]), {"top": 10}),
    ]


# -- step 4: pseudo mask, hull, box ------------------------------------------------------


@_cases("pseudo_mask")
def _cases_pseudo_mask() -> list[Case]:
    peak = np.zeros((5, 5))
    peak[1:3, 2:4] = [[1.0, 3.0], [2.0, 0.5]]
    at_mean = np.array([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # mean = 1
    nan = np.ones((3, 3))
    nan[1, 1] = np.nan
    r = realistic_inputs("pseudo_mask")
    return [
        Case("one peak", (peak,)),
        Case("cells equal to the mean are background", (at_mean,)),
        Case("uniform map: empty mask", (np.full((4, 4), 0.25),)),
        Case("map with NaN: empty mask", (nan,)),
        Case("threshold=0.5: above half the maximum", (peak,), {"threshold": 0.5}),
        Case("realistic: smoothed sum of three heads on a 12 x 12 grid", (r["combined"],)),
    ]


def _mask(h: int, w: int, cells: Iterable[tuple[int, int]]) -> np.ndarray:
    return _blob_map(h, w, cells).astype(bool)


@_cases("convex_hull")
def _cases_convex_hull() -> list[Case]:
    r = realistic_inputs("convex_hull")
    return [
        Case("one cell: its square", (_mask(4, 4, [(1, 2)]),)),
        Case("L shape", (_mask(5, 5, [(1, 1), (2, 1), (3, 1), (3, 2), (3, 3)]),)),
        Case("two cells far apart", (_mask(6, 6, [(0, 0), (4, 5)]),)),
        Case("a row of cells on a 3 x 6 grid", (_mask(3, 6, [(2, 1), (2, 2), (2, 3)]),)),
        Case("empty mask: None", (np.zeros((4, 4), dtype=bool),)),
        Case("realistic: a pseudo mask on a 12 x 12 grid", (r["mask"],)),
    ]


@_cases("grid_box")
def _cases_grid_box() -> list[Case]:
    r = realistic_inputs("grid_box")
    return [
        Case("one cell at row 2, column 1", (_mask(4, 4, [(2, 1)]),)),
        Case("two cells on a 3 x 5 grid (x = column, y = row)",
             (_mask(3, 5, [(0, 3), (1, 4)]),)),
        Case("the whole grid", (np.ones((3, 4), dtype=bool),)),
        Case("scattered cells", (_mask(6, 6, [(0, 2), (5, 0), (3, 4)]),)),
        Case("empty mask: None", (np.zeros((4, 4), dtype=bool),)),
        Case("realistic: a pseudo mask on a 12 x 12 grid", (r["mask"],)),
    ]


# -- chapter 6: the grid box on a non-square photo ----------------------------------------


@_cases("grid_box_to_image")
def _cases_grid_box_to_image() -> list[Case]:
    b = np.array
    r = realistic_inputs("grid_box_to_image")
    return [
        Case("square 336 x 336 image, 24 x 24 grid: the pad is a no-op",
             (b([2.0, 3, 10, 12]), (24, 24), (336, 336))),
        Case("landscape 640 x 480, 4 x 4 grid: pad above and below",
             (b([1.0, 1, 3, 3]), (4, 4), (640, 480))),
        Case("portrait 300 x 600, 3 x 3 grid: pad left and right",
             (b([1.0, 0, 2, 2]), (3, 3), (300, 600))),
        Case("grid of 2 rows x 4 columns on a 400 x 300 image (grid is (h, w))",
             (b([0.0, 1, 2, 2]), (2, 4), (400, 300))),
        Case("odd padding: 101 x 50 image, the pad is (101 - 50) // 2 = 25 pixels",
             (b([1.0, 1, 2, 2]), (4, 4), (101, 50))),
        Case("box reaching into the padding: clipped to the image",
             (b([0.0, 0, 2, 1]), (4, 4), (640, 480))),
        Case("box wholly in the padding: zero height on the image's edge",
             (b([1.0, 3.5, 2, 4]), (4, 4), (640, 480))),
        Case("realistic: a person on a 640 x 427 COCO photo, LLaVA-1.5's 24 x 24 grid",
             (r["box_grid"], tuple(int(v) for v in r["grid"]),
              tuple(int(v) for v in r["image_size"]))),
    ]


# -- metrics -------------------------------------------------------------------------------


@_cases("box_iou")
def _cases_box_iou() -> list[Case]:
    b = np.array
    r = realistic_inputs("box_iou")
    return [
        Case("identical boxes", (b([10.0, 20, 50, 60]), b([10.0, 20, 50, 60]))),
        Case("half overlap", (b([0.0, 0, 2, 2]), b([1.0, 0, 3, 2]))),
        Case("one box inside the other", (b([1.0, 1, 3, 3]), b([0.0, 0, 4, 4]))),
        Case("apart in x and in y", (b([0.0, 0, 1, 1]), b([2.0, 2, 4, 4]))),
        Case("apart in x only", (b([0.0, 0, 2, 4]), b([3.0, 1, 5, 3]))),
        Case("touching edges", (b([0.0, 0, 2, 2]), b([2.0, 0, 4, 2]))),
        Case("no prediction (None)", (None, b([0.0, 0, 2, 2]))),
        Case("realistic: a predicted and a ground-truth box in pixels",
             (r["pred"], r["gt"])),
    ]


@_cases("acc_at")
def _cases_acc_at() -> list[Case]:
    r = realistic_inputs("acc_at")
    return [
        Case("all above 0.5", ([0.9, 0.7, 0.51],)),
        Case("exactly 0.5 counts as correct", ([0.5, 0.49],)),
        Case("mixed", ([0.1, 0.6, 0.0, 0.8, 0.3],)),
        Case("threshold 0.75", ([0.7, 0.75, 0.9, 0.2],), {"threshold": 0.75}),
        Case("no items: NaN (undefined)", ([],)),
        Case("realistic: 20 IoUs", (list(r["ious"]),)),
    ]


# ----------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------


def _fmt(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, BaseException):
        return f"raised {type(x).__name__}: {x}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    if isinstance(x, np.ndarray):
        if x.size > 16 or x.ndim > 2:
            return f"array of shape {x.shape}, dtype {x.dtype}"
        return " ".join(np.array2string(x, precision=4, separator=", ").split())
    return repr(x)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _same_float(got, exp, rtol=1e-6, atol=1e-9) -> tuple[bool, str]:
    try:
        g = float(_to_numpy(got))
    except (TypeError, ValueError):
        return False, "not a number"
    if math.isnan(exp):
        return math.isnan(g), "value"
    if math.isinf(exp):
        return g == exp, "value"
    return math.isclose(g, exp, rel_tol=rtol, abs_tol=atol), "value"


def _same_array(got, exp: np.ndarray, atol: float = 1e-6) -> tuple[bool, str]:
    try:
        g = _to_numpy(got).astype(np.float64)
    except (TypeError, ValueError):
        return False, "not an array of numbers"
    if g.shape != exp.shape:
        return False, f"shape {g.shape}, expected {exp.shape}"
    same = np.isclose(g, exp, rtol=0, atol=atol) | (np.isinf(g) & np.isinf(exp) & (g == exp))
    if not same.all():
        bad = tuple(int(i) for i in np.argwhere(~same)[0])
        return False, (f"{int((~same).sum())} of {same.size} values differ; first at index "
                       f"{bad}: expected {exp[bad]:.6g}, got {g[bad]:.6g}")
    return True, ""


def _same_mask(got, exp: np.ndarray) -> tuple[bool, str]:
    g = _to_numpy(got)
    if g.shape != exp.shape:
        return False, f"shape {g.shape}, expected {exp.shape}"
    if g.dtype != bool:
        return False, f"dtype {g.dtype}, expected bool"
    if not np.array_equal(g, exp):
        return False, f"{int((g != exp).sum())} cells differ"
    return True, ""


def _same_int(got, exp: int) -> tuple[bool, str]:
    if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, np.integer)):
        return False, f"expected an int index, got {type(got).__name__}"
    return int(got) == exp, "value"


def _same_optional_array(got, exp, atol: float = 1e-6) -> tuple[bool, str]:
    if exp is None or got is None:
        return (got is None and exp is None), "None expected" if exp is None else "got None"
    return _same_array(got, exp, atol)


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _on_boundary(points: np.ndarray, poly: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """[k] bool: each point lies on an edge of the closed polygon ``poly``."""
    a, b = poly, np.roll(poly, -1, axis=0)  # [K, 2] edges a -> b
    ab = b - a
    ap = points[:, None, :] - a[None]  # [k, K, 2]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0, 1)  # [k, K]
    closest = a[None] + t[..., None] * ab[None]
    dist = np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)
    return dist <= tol


def _same_hull(got, exp) -> tuple[bool, str]:
    if exp is None or got is None:
        return (got is None and exp is None), "None expected" if exp is None else "got None"
    g = _to_numpy(got).astype(np.float64)
    if g.ndim != 2 or g.shape[1] != 2 or len(g) < 3:
        return False, f"expected [K, 2] (x, y) vertices with K >= 3, got shape {g.shape}"
    if not _on_boundary(g, exp).all():
        return False, "a vertex is not on the convex hull of the cells' corners"
    if not _on_boundary(exp, g).all():
        return False, "the polygon misses a corner of the hull (vertices out of order?)"
    if not math.isclose(_polygon_area(g), _polygon_area(exp), abs_tol=1e-9):
        return False, f"area {_polygon_area(g):g}, expected {_polygon_area(exp):g}"
    return True, ""


_COMPARE: dict[str, Callable[[Any, Any], tuple[bool, str]]] = {
    "last_token_attention": lambda g, e: _same_array(g, e, atol=1e-5),
    "s_img": lambda g, e: _same_array(g, e, atol=1e-6),
    "find_elbow": _same_int,
    "spatial_entropy": _same_float,
    "selection_frequency": lambda g, e: _same_array(g, e, atol=1e-9),
    "pseudo_mask": _same_mask,
    "convex_hull": _same_hull,
    "grid_box": _same_optional_array,
    "grid_box_to_image": lambda g, e: _same_array(g, e, atol=1e-3),  # float32 answers pass
    "box_iou": _same_float,
    "acc_at": _same_float,
}


# ----------------------------------------------------------------------------------------
# Running a checker
# ----------------------------------------------------------------------------------------


def run_check(name: str, fn: Callable, *, verbose: bool = True, strict: bool | None = None
              ) -> CheckResult:
    """Run ``fn`` on every case of checker ``name`` and compare with the stored answers.

    Args:
        name: The checker, e.g. ``"spatial_entropy"`` (see :data:`CASE_BUILDERS`).
        fn: The student's function.
        verbose: Print the failures and the summary line.
        strict: Raise :class:`CheckFailed` when a case fails (default: the environment
            variable ``MINILOCAL_STRICT_CHECKS`` is ``"1"``).

    Returns:
        A :class:`CheckResult`.

    Book: every chapter's exercises.
    """
    if not callable(fn):
        raise TypeError(f"check_{name} takes your function, got {type(fn).__name__}")
    expected = _expected_all()[name]
    compare = _COMPARE[name]
    result = CheckResult(name, 0, 0)
    for case in cases(name):
        result.total += 1
        exp = decode_expected(expected[case.name])
        try:
            got = fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except Exception as err:  # the student's bug is a failed case, not a crash
            result.failures.append(CaseFailure(case.name, _fmt(exp), _fmt(err), "exception"))
            continue
        try:
            ok, why = compare(got, exp)
        except Exception as err:  # an answer of an unexpected type
            ok, why = False, f"cannot compare: {type(err).__name__}: {err}"
        if ok:
            result.passed += 1
        else:
            shown = _to_numpy(got) if hasattr(got, "detach") else got
            result.failures.append(CaseFailure(case.name, _fmt(exp), _fmt(shown), why))
    if verbose:
        print(result.report())
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") == "1"
    if strict and not result.ok:
        raise CheckFailed(result.report())
    return result


def check_last_token_attention(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(attentions, positions, grid) -> attn [L, H, h, w]``.

    ``attentions`` is what an eager forward with ``output_attentions=True`` returns: a tuple
    of L torch tensors [1, H, T, T] (batch of one). ``positions`` is a [n] torch.long tensor
    of the image-token positions in grid order (row-major), ``grid`` = (h, w) with
    h * w = n. The answer is the LAST query's row at the image positions, reshaped to the
    grid (a numpy array or a torch tensor).

    Book: ``book/01_attention.ipynb``.
    """
    return run_check("last_token_attention", fn, **kw)


def check_s_img(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(row, positions) -> s_img [L, H]``.

    ``row`` [L, H, T] is the last query's attention over ALL T keys (each row sums to 1),
    ``positions`` [n] the image-token positions. S_img is the share of the row on the image.

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    return run_check("s_img", fn, **kw)


def check_find_elbow(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(values) -> int``: index of the elbow in the ascending-sorted values
    (0 when there is no elbow), as :func:`minilocal.criteria.find_elbow` defines it.

    Book: ``book/02_s_img_elbow.ipynb``.
    """
    return run_check("find_elbow", fn, **kw)


def check_spatial_entropy(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(map2d) -> float``: the paper's spatial entropy of one [h, w] map
    (foreground > mean, 8-connected components, P = component size / foreground size,
    natural log; +inf when there is no foreground).

    Book: ``book/03_spatial_entropy.ipynb``.
    """
    return run_check("spatial_entropy", fn, **kw)


def check_selection_frequency(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(entropy, passing, top=10) -> [L, H]`` selection frequency in percent.

    ``entropy`` [N, L, H] per sample, ``passing`` [N, L, H] bool (criterion 1). Each sample
    lists its ``top`` passing heads of lowest finite entropy (ties by (layer, head)).

    Book: ``book/04_selection.ipynb``.
    """
    return run_check("selection_frequency", fn, **kw)


def check_pseudo_mask(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(combined, threshold="mean") -> bool [h, w]``: cells strictly above the
    map's mean (or above ``threshold`` x max for a float threshold); empty for a uniform
    map or a map with NaN.

    Book: ``book/05_grounding.ipynb``.
    """
    return run_check("pseudo_mask", fn, **kw)


def check_convex_hull(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(mask) -> [K, 2] (x, y) vertices | None``: the convex hull of the CORNERS
    of the foreground cells (cell (i, j) is the square [j, j+1] x [i, i+1]), vertices in
    order around the polygon (any start, either direction); None for an empty mask.

    Book: ``book/05_grounding.ipynb``.
    """
    return run_check("convex_hull", fn, **kw)


def check_grid_box(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(mask) -> [4] xyxy in grid units | None``: the box around the foreground
    cells' extents (cell (i, j) spans x in [j, j+1], y in [i, i+1]); None when empty.

    Book: ``book/05_grounding.ipynb``.
    """
    return run_check("grid_box", fn, **kw)


def check_grid_box_to_image(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(box_grid, grid, image_size) -> [4] xyxy in image pixels``: a box in grid
    units (``[x0, y0, x1, y1]``, x along the columns) mapped through LLaVA-1.5's
    pad-to-square geometry. ``grid`` is (h, w), ``image_size`` is (W, H). The grid covers
    the image pasted in the middle of a square of side S = max(W, H), at
    ((S - W) // 2, (S - H) // 2): x = gx * S / w - (S - W) // 2, y = gy * S / h - (S - H) // 2,
    then clipped to [0, W] x [0, H] (:meth:`minilocal.geometry.Geometry.grid_box_to_image`
    of ``Geometry.pad_to_square``). Answers within 1e-3 pixel pass.

    Book: ``book/06_your_model.ipynb``.
    """
    return run_check("grid_box_to_image", fn, **kw)


def check_box_iou(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(pred, gt) -> float``: IoU of two xyxy pixel boxes; 0 when ``pred`` is
    None, when the boxes do not overlap, or when the union is 0.

    Book: ``book/00_visual_grounding.ipynb`` and ``book/05_grounding.ipynb``.
    """
    return run_check("box_iou", fn, **kw)


def check_acc_at(fn: Callable, **kw) -> CheckResult:
    """Check ``fn(ious, threshold=0.5) -> float``: fraction of items with IoU >= threshold
    (Acc@0.5), NaN for no items.

    Book: ``book/00_visual_grounding.ipynb`` and ``book/05_grounding.ipynb``.
    """
    return run_check("acc_at", fn, **kw)


#: Checker functions by name.
CHECKERS: dict[str, Callable[..., CheckResult]] = {
    "last_token_attention": check_last_token_attention,
    "s_img": check_s_img,
    "find_elbow": check_find_elbow,
    "spatial_entropy": check_spatial_entropy,
    "selection_frequency": check_selection_frequency,
    "pseudo_mask": check_pseudo_mask,
    "convex_hull": check_convex_hull,
    "grid_box": check_grid_box,
    "grid_box_to_image": check_grid_box_to_image,
    "box_iou": check_box_iou,
    "acc_at": check_acc_at,
}
