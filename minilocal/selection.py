"""Step 3 of the slides: find the localization heads by their selection frequency.

For each of N random calibration samples (RefCOCO train in the paper), among the heads that
pass criterion 1 (S_img at or above the elbow), the ``top`` = 10 heads with the lowest
spatial entropy are recorded. The draw of N samples is repeated R = 5 times with recorded
seeds. A head's selection frequency is

    (number of lowest-10 lists it appears in) / (N * R),   in percent,

and the ``k`` = 3 most frequent heads are THE localization heads of the model (the "fixed"
head set). :func:`greedy_heads` is the per-sample variant: each sample uses its own
lowest-entropy passing heads.

The result is a :class:`HeadTable`, saved as human-readable JSON and loadable without
recomputing. :func:`find_heads` computes it from an attention function and a dataset, with
an optional per-item cache that makes an interrupted run resumable.

Book: ``book/04_selection.ipynb``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ._version import __version__
from .criteria import (
    _FOREGROUND,
    _STRUCTURE_2D,
    _THRESHOLDS,
    Connectivity,
    ElbowMode,
    EntropyMethod,
    _lookup,
    last_row_max,
    passes_s_img,
    s_img,
    s_img_thresholds,
    spatial_entropy,
)
from .errors import CacheError, HeadTableError, InputError

Head = tuple[int, int]
Source = Literal["measured", "as reported"]
_SOURCES = ("measured", "as reported")
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_FORMAT = "minilocal-head-table"
_FORMAT_VERSION = 1
_CACHE_FORMAT = "minilocal-selection-cache"
_CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------
# Heads as text
# ----------------------------------------------------------------------------------------


def format_head(head: Head) -> str:
    """``(14, 24)`` -> ``"L14H24"`` (0-based layer and head, as in the paper's figures).

    Book: ``book/04_selection.ipynb``.
    """
    layer, h = head
    return f"L{int(layer)}H{int(h)}"


def parse_head(text: str) -> Head:
    """``"L14H24"`` -> ``(14, 24)``.

    Book: ``book/04_selection.ipynb``.
    """
    m = _HEAD_RE.match(str(text).strip())
    if not m:
        raise HeadTableError(
            f"{text!r} is not a head name",
            'write heads as "L<layer>H<head>" with 0-based numbers, e.g. "L14H24".',
        )
    return int(m.group(1)), int(m.group(2))


# ----------------------------------------------------------------------------------------
# Lowest-entropy heads and selection frequency
# ----------------------------------------------------------------------------------------


def _check_pair(entropy, passing, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(entropy, dtype=np.float64)
    p = np.asarray(passing)
    if e.ndim < 2 or (ndim is not None and e.ndim != ndim):
        want = "[L, H]" if ndim == 2 else "[..., L, H]"
        raise InputError(
            f"entropy must have shape {want}, got {e.shape}",
            "pass the spatial entropy per (layer, head), e.g. spatial_entropy(attn).",
        )
    if p.shape != e.shape or p.dtype != bool:
        raise InputError(
            f"passing must be a bool array of the entropy's shape {e.shape}, got "
            f"{p.dtype} {p.shape}",
            "pass the criterion-1 mask from passes_s_img (for one sample: passing[i]).",
        )
    return e, p


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}", f"use {name} >= 1.")
    return int(value)


def lowest_entropy_heads(entropy: np.ndarray, passing: np.ndarray, top: int = 10) -> list[Head]:
    """The ``top`` passing heads of one sample with the lowest spatial entropy.

    Heads with infinite (or NaN) entropy are never selected, so fewer than ``top`` heads
    come back when fewer qualify. Ties are broken by (layer, head), smallest first.

    Args:
        entropy: [L, H] spatial entropy of one sample's heads.
        passing: [L, H] bool, the heads that pass criterion 1.
        top: How many heads to keep (10 in the paper).

    Returns:
        Up to ``top`` heads ``(layer, head)``, lowest entropy first.

    Book: ``book/04_selection.ipynb``.
    """
    e, p = _check_pair(entropy, passing, ndim=2)
    top = _check_positive("top", top)
    n_heads = e.shape[1]
    cand = np.flatnonzero(p & np.isfinite(e))  # [c] flat indices, in (layer, head) order
    order = cand[np.argsort(e.ravel()[cand], kind="stable")][:top]  # stable: ties by index
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


def greedy_heads(entropy: np.ndarray, passing: np.ndarray, k: int = 3):
    """Per-sample ("greedy") variant: each sample's own ``k`` lowest-entropy passing heads.

    The public code picks the heads per sample this way instead of using one fixed set.

    Args:
        entropy: [L, H] (one sample) or [N, L, H] spatial entropy.
        passing: Same shape, bool: heads that pass criterion 1.
        k: Heads per sample.

    Returns:
        For [L, H]: a list of up to ``k`` heads; for [N, L, H]: one such list per sample.

    Book: ``book/04_selection.ipynb``.
    """
    e, p = _check_pair(entropy, passing)
    if e.ndim == 2:
        return lowest_entropy_heads(e, p, top=k)
    if e.ndim != 3:
        raise InputError(
            f"greedy_heads takes [L, H] or [N, L, H], got {e.shape}",
            "pass one sample's entropy or a stack of samples.",
        )
    return [lowest_entropy_heads(ei, pi, top=k) for ei, pi in zip(e, p)]


def selection_counts(entropy: np.ndarray, passing: np.ndarray, top: int = 10) -> np.ndarray:
    """How many per-sample lowest-``top`` lists each head appears in (vectorized).

    Args:
        entropy: [..., L, H] entropy; every leading index is one sample (for R repeats of
            N samples: [R, N, L, H]; an item drawn twice counts twice).
        passing: [..., L, H] bool, same shape.
        top: Size of each sample's list.

    Returns:
        [L, H] int64 counts; the same lists as :func:`lowest_entropy_heads` per sample.

    Book: ``book/04_selection.ipynb``.
    """
    e, p = _check_pair(entropy, passing)
    top = _check_positive("top", top)
    n_layers, n_heads = e.shape[-2:]
    e = e.reshape(-1, n_layers * n_heads)  # [S, L*H]
    p = p.reshape(-1, n_layers * n_heads)
    key = np.where(p & np.isfinite(e), e, np.inf)  # [S, L*H] non-candidates sort last
    order = np.argsort(key, axis=1, kind="stable")[:, :top]  # [S, top] ties by (layer, head)
    chosen = np.isfinite(np.take_along_axis(key, order, axis=1))  # [S, top]
    counts = np.bincount(order[chosen], minlength=n_layers * n_heads)
    return counts.reshape(n_layers, n_heads).astype(np.int64)


def selection_frequency(entropy: np.ndarray, passing: np.ndarray, top: int = 10) -> np.ndarray:
    """Selection frequency of every head, in percent.

    frequency = 100 * (appearances in the per-sample lowest-``top`` lists) / (number of
    samples), where the samples are all leading indices: N samples x R repeats give
    N * R lists, as in the paper.

    Args:
        entropy: [..., L, H] entropy per sample (e.g. [R, N, L, H]).
        passing: [..., L, H] bool, same shape.
        top: Size of each sample's list (10).

    Returns:
        [L, H] float64 in [0, 100].

    Book: ``book/04_selection.ipynb``.
    """
    e, p = _check_pair(entropy, passing)
    n_samples = int(np.prod(e.shape[:-2]))
    if n_samples == 0:
        raise InputError("selection_frequency got no samples", "pass at least one sample.")
    return 100.0 * selection_counts(e, p, top) / n_samples


def top_heads(frequencies: np.ndarray, k: int = 3) -> list[Head]:
    """The ``k`` most frequent heads (frequency > 0), ties broken by (layer, head).

    Args:
        frequencies: [L, H] selection frequency.
        k: How many heads.

    Returns:
        Up to ``k`` heads, most frequent first (fewer when fewer were ever selected).

    Book: ``book/04_selection.ipynb``.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 2:
        raise InputError(f"frequencies must be [L, H], got {f.shape}", "pass one [L, H] array.")
    k = _check_positive("k", k)
    flat = f.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i // f.shape[1]), int(i % f.shape[1])) for i in order if flat[i] > 0]


# ----------------------------------------------------------------------------------------
# The head table
# ----------------------------------------------------------------------------------------


def _table_error(path, what: str) -> HeadTableError:
    return HeadTableError(
        f"head table {str(path)!r}: {what}",
        "pass a file written by HeadTable.to_json, or make one with "
        "minilocal.selection.find_heads (CLI: `minilocal find-heads`).",
    )


@dataclass(eq=False)
class HeadTable:
    """The localization heads of one model, with everything needed to trust or redo them.

    Attributes:
        model_id: The model (hub id or path) the heads were found for.
        num_layers: Decoder layers L of that model.
        num_heads: Attention heads H per layer.
        heads: The chosen heads ``(layer, head)``, most frequent first.
        frequencies: [L, H] selection frequency in percent (None when not measured).
        revision: Model revision (commit) if known.
        prompt_template: The prompt the attention was recorded with.
        settings: Every setting of the search: ``n``, ``repeats``, ``seed``, ``seeds`` (one
            per repeat), ``top``, ``k``, ``elbow``, ``entropy``, ``entropy_params``,
            ``filters``, ``dataset`` (see :func:`find_heads`).
        sample_ids: Per repeat, the item ids drawn.
        s_img_thresholds: Per repeat, the elbow threshold(s): one value (``"mean"``) or one
            per sample (``"per_sample"``).
        source: ``"measured"`` (computed by minilocal) or ``"as reported"`` (copied from a
            paper or another source; say which in ``notes``).
        minilocal_version: Version that wrote the table.
        date: ISO date the table was made.
        notes: Free text.

    Book: ``book/04_selection.ipynb``.
    """

    model_id: str
    num_layers: int
    num_heads: int
    heads: list[Head]
    frequencies: np.ndarray | None = None
    revision: str | None = None
    prompt_template: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    sample_ids: list[list[str]] = field(default_factory=list)
    s_img_thresholds: list[list[float]] = field(default_factory=list)
    source: Source = "measured"
    minilocal_version: str = __version__
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())
    notes: str = ""

    def __post_init__(self):
        self.num_layers, self.num_heads = int(self.num_layers), int(self.num_heads)
        if self.num_layers < 1 or self.num_heads < 1:
            raise HeadTableError(
                f"a head table needs num_layers, num_heads >= 1, got "
                f"{self.num_layers} x {self.num_heads}",
                "give the model's decoder layers and heads (adapter.num_layers, num_heads).",
            )
        heads = []
        for hd in self.heads:
            layer, h = parse_head(hd) if isinstance(hd, str) else (int(hd[0]), int(hd[1]))
            if not (0 <= layer < self.num_layers and 0 <= h < self.num_heads):
                raise HeadTableError(
                    f"head {format_head((layer, h))} is outside a model of "
                    f"{self.num_layers} layers x {self.num_heads} heads",
                    "use 0-based (layer, head) numbers within the model's shape.",
                )
            if (layer, h) in heads:
                raise HeadTableError(
                    f"head {format_head((layer, h))} is listed twice",
                    "list each head once (a repeated head would count twice in the "
                    "combined map).",
                )
            heads.append((layer, h))
        self.heads = heads
        if self.frequencies is not None:
            self.frequencies = np.asarray(self.frequencies, dtype=np.float64)
            if self.frequencies.shape != (self.num_layers, self.num_heads):
                raise HeadTableError(
                    f"frequencies have shape {self.frequencies.shape}, the table says "
                    f"{self.num_layers} x {self.num_heads}",
                    "store one frequency per (layer, head) of the model.",
                )
            bad = ~np.isfinite(self.frequencies) | (self.frequencies < 0)
            if bad.any():
                layer, h = (int(v) for v in np.argwhere(bad)[0])
                raise HeadTableError(
                    f"frequency of {format_head((layer, h))} is "
                    f"{self.frequencies[layer, h]!r}; frequencies are percentages >= 0",
                    "store finite frequencies (0 for a head never selected), or "
                    "frequencies=None when they were not measured.",
                )
        if self.source not in _SOURCES:
            raise HeadTableError(f"unknown source {self.source!r}", f"use one of {list(_SOURCES)}.")

    # -- display -------------------------------------------------------------------------

    def heads_str(self) -> str:
        """The chosen heads as text, e.g. ``"L14H24, L14H13, L12H3"``."""
        return ", ".join(format_head(h) for h in self.heads)

    def __repr__(self) -> str:
        return (
            f"HeadTable({self.model_id!r}, {self.num_layers}x{self.num_heads}, "
            f"heads=[{self.heads_str()}], source={self.source!r})"
        )

    def __eq__(self, other) -> bool:
        if not isinstance(other, HeadTable):
            return NotImplemented
        a, b = self._to_dict(), other._to_dict()
        fa, fb = self.frequencies, other.frequencies
        same_f = (fa is None and fb is None) or (
            fa is not None and fb is not None and np.array_equal(fa, fb)
        )
        a.pop("frequencies_percent"), b.pop("frequencies_percent")
        return same_f and a == b

    # -- checks --------------------------------------------------------------------------

    def check_model(self, num_layers: int, num_heads: int, model_id: str | None = None) -> None:
        """Raise unless the table fits a model of this shape; warn if only the id differs.

        Args:
            num_layers: Decoder layers of the model in use.
            num_heads: Attention heads per layer of the model in use.
            model_id: Its id; a different id with the same shape gives a warning only.

        Book: ``book/04_selection.ipynb``.
        """
        if (int(num_layers), int(num_heads)) != (self.num_layers, self.num_heads):
            raise HeadTableError(
                f"this head table was made for {self.model_id!r} "
                f"({self.num_layers} layers x {self.num_heads} heads), but the model has "
                f"{num_layers} layers x {num_heads} heads",
                "load the head table made for this model, or find its heads with "
                "minilocal.selection.find_heads (CLI: `minilocal find-heads`).",
            )
        if model_id is not None and model_id != self.model_id:
            warnings.warn(
                f"head table made for {self.model_id!r} is used with {model_id!r} (same "
                f"shape {num_layers}x{num_heads}); its heads may not localize in this model. "
                "Find this model's heads with minilocal.selection.find_heads.",
                UserWarning,
                stacklevel=2,
            )

    # -- JSON ----------------------------------------------------------------------------

    def _to_dict(self) -> dict:
        freq = None if self.frequencies is None else self.frequencies.tolist()
        ranking = {}
        if self.frequencies is not None:
            for hd in top_heads(self.frequencies, k=20):
                ranking[format_head(hd)] = float(self.frequencies[hd])
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "model_id": self.model_id,
            "revision": self.revision,
            "prompt_template": self.prompt_template,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "heads": [format_head(h) for h in self.heads],
            "source": self.source,
            "minilocal_version": self.minilocal_version,
            "date": self.date,
            "notes": self.notes,
            "settings": _jsonable(self.settings),
            "most_frequent_percent": ranking,  # derived from frequencies; ignored on load
            "frequencies_percent": freq,
            "s_img_thresholds": [[float(t) for t in row] for row in self.s_img_thresholds],
            "sample_ids": [[str(i) for i in row] for row in self.sample_ids],
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the table as human-readable JSON (heads as ``"L14H24"``; one line per
        layer of frequencies; one line per repeat of sample ids). Atomic (tmp + rename).

        Returns:
            The path written.

        Book: ``book/04_selection.ipynb``.
        """
        d = self._to_dict()
        rows = {key: d[key] for key in ("frequencies_percent", "s_img_thresholds", "sample_ids")}
        for key in rows:
            d[key] = f"@@{key}@@"
        text = json.dumps(d, indent=2, ensure_ascii=False, allow_nan=False)
        for key, value in rows.items():
            if value is None:
                block = "null"
            elif not value:
                block = "[]"
            else:
                lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in value]
                block = "[\n    " + ",\n    ".join(lines) + "\n  ]"
            text = text.replace(json.dumps(f"@@{key}@@"), block)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path, (text + "\n").encode("utf-8"))
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> HeadTable:
        """Load a table written by :meth:`to_json`.

        Raises:
            HeadTableError: The file is missing, not JSON, or not a head table.

        Book: ``book/04_selection.ipynb``.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _table_error(path, "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _table_error(path, f"cannot be read as JSON ({err})") from None
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise _table_error(path, f'not a head table (no "format": "{_FORMAT}")')
        if d.get("format_version") != _FORMAT_VERSION:
            raise _table_error(
                path,
                f"format_version {d.get('format_version')!r}, this minilocal reads "
                f"{_FORMAT_VERSION} (upgrade minilocal or re-run find_heads)",
            )
        missing = [k for k in ("model_id", "num_layers", "num_heads", "heads") if k not in d]
        if missing:
            raise _table_error(path, f"missing keys {missing}")
        try:
            return cls(
                model_id=d["model_id"],
                num_layers=d["num_layers"],
                num_heads=d["num_heads"],
                heads=[parse_head(h) for h in d["heads"]],
                frequencies=d.get("frequencies_percent"),
                revision=d.get("revision"),
                prompt_template=d.get("prompt_template"),
                settings=d.get("settings") or {},
                sample_ids=d.get("sample_ids") or [],
                s_img_thresholds=d.get("s_img_thresholds") or [],
                source=d.get("source", "measured"),
                minilocal_version=d.get("minilocal_version", ""),
                date=d.get("date", ""),
                notes=d.get("notes", ""),
            )
        except HeadTableError as err:
            raise _table_error(path, err.message) from None
        except (TypeError, ValueError) as err:
            raise _table_error(path, f"malformed value ({err})") from None


def _jsonable(x):
    """Settings to plain JSON types (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------
# Per-item scores and the resumable search
# ----------------------------------------------------------------------------------------


@dataclass
class ItemScores:
    """What the search needs from one item's attention (all [L, H] float64).

    Attributes:
        s_img: Attention mass on the image per head.
        entropy: Spatial entropy per head.
        last_row: Largest value in the last grid row per head (for the public-code filter).
    """

    s_img: np.ndarray
    entropy: np.ndarray
    last_row: np.ndarray


def item_scores(
    attn: np.ndarray,
    entropy: EntropyMethod = "paper",
    *,
    c: float = 1.0,
    fg_threshold: float = 1e-3,
    connectivity: Connectivity = 8,
) -> ItemScores:
    """S_img, spatial entropy and last-row max of every head of one item.

    Args:
        attn: [L, H, h, w] one item's attention maps.
        entropy, c, fg_threshold, connectivity: As in
            :func:`minilocal.criteria.spatial_entropy`.

    Book: ``book/04_selection.ipynb``.
    """
    a = np.asarray(attn)
    if a.ndim != 4:
        raise InputError(
            f"attention must have shape [L, H, h, w], got {a.shape}",
            "make attention_fn return one item's maps, e.g. "
            "lambda it: adapter.attention(it.image, it.expr)[0].",
        )
    ent = spatial_entropy(a, entropy, c=c, fg_threshold=fg_threshold, connectivity=connectivity)
    return ItemScores(
        s_img=s_img(a),
        entropy=ent,
        last_row=last_row_max(a).astype(np.float64),
    )


def _reason(err: BaseException) -> str:
    """One line saying why an item failed: the error's type and first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "x"


class _ItemCache:
    """Per-item :class:`ItemScores` on disk, one ``.npz`` per item, written atomically.

    The folder name holds a hash of the manifest (everything the scores depend on), so
    different settings or models never share a folder; a folder whose manifest differs from
    the expected one raises :class:`CacheError`.
    """

    def __init__(self, root: str | os.PathLike, manifest: dict):
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / f"{_slug(manifest['model_id'])}-{digest[:12]}"
        self.items = self.dir / "items"
        self.items.mkdir(parents=True, exist_ok=True)
        mpath = self.dir / "manifest.json"
        if mpath.exists():
            try:
                found = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                found = None
            if found != manifest:
                raise CacheError(
                    f"cache folder {str(self.dir)!r} holds results made with other settings "
                    f"or another model: {found} != {manifest}",
                    "delete that folder, or pass a different cache_dir.",
                )
        else:
            _atomic_write_bytes(mpath, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def _path(self, item_id: str) -> Path:
        digest = hashlib.sha1(item_id.encode()).hexdigest()[:12]
        return self.items / f"{_slug(item_id)}-{digest}.npz"

    def load(self, item_id: str) -> ItemScores | None:
        path = self._path(item_id)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["item_id"]) != item_id:
                    return None
                return ItemScores(z["s_img"], z["entropy"], z["last_row"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"unreadable cache file {path} ({err}); recomputing it", stacklevel=3)
            return None

    def save(self, item_id: str, sc: ItemScores) -> None:
        path = self._path(item_id)
        fd, tmp = tempfile.mkstemp(dir=self.items, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    item_id=np.array(item_id),
                    s_img=sc.s_img,
                    entropy=sc.entropy,
                    last_row=sc.last_row,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def find_heads(
    attention_fn: Callable[[Any], np.ndarray],
    dataset,
    *,
    n: int = 1000,
    repeats: int = 5,
    seed: int = 0,
    top: int = 10,
    k: int = 3,
    elbow: ElbowMode = "mean",
    entropy: EntropyMethod = "paper",
    c: float = 1.0,
    fg_threshold: float = 1e-3,
    connectivity: Connectivity = 8,
    skip_layers: Sequence[int] = (),
    last_row_limit: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    model_id: str = "",
    revision: str | None = None,
    prompt_template: str | None = None,
    fingerprint: dict[str, Any] | None = None,
    notes: str = "",
    shard: tuple[int, int] | None = None,
) -> HeadTable | None:
    """Find a model's localization heads by selection frequency (METHOD.md section 4).

    Repeat r (of ``repeats``) draws ``dataset.sample(n, seed + r)``. Each distinct item's
    attention is computed once (items drawn by several repeats are shared) and reduced to
    :class:`ItemScores`. Per repeat, criterion 1 gives the passing heads (``elbow`` mode
    over that repeat's n samples, then the filters); each sample's ``top`` lowest-entropy
    passing heads are counted; frequencies pool all N * R lists; the ``k`` most frequent
    heads are chosen.

    With ``cache_dir``, each item's scores are written atomically as soon as they are
    computed, in a folder keyed by (model_id, revision, prompt_template, fingerprint,
    entropy method and its parameters); a re-run skips cached items, so an interrupted run
    resumes and gives the same table as an uninterrupted one. Pass ``fingerprint`` (from
    :func:`minilocal.provenance.model_fingerprint`: a hash of the weights, dtype,
    quantization): two models with one id then never share cached scores. Anything else
    that changes ``attention_fn``'s output must be reflected in one of these.

    An item whose ``attention_fn`` raises (an unreadable image, an expression the model
    refuses) is skipped with a warning: it is left out of its repeats, named with its
    reason in ``settings["skipped"]``, and not cached (a re-run tries it again). Only when
    every item fails does the search stop, with the first item's error.

    Args:
        attention_fn: item -> attn [L, H, h, w] (numpy float32), e.g.
            ``lambda it: adapter.attention(it.image, it.expr)[0]``.
        dataset: A :class:`minilocal.data.GroundingDataset` (item ids must be unique).
        n: Samples per repeat (1000).
        repeats: Number of random draws R (5).
        seed: Repeat r uses seed ``seed + r``.
        top: Lowest-entropy heads recorded per sample (10).
        k: Heads chosen (3).
        elbow: ``"mean"`` (paper) or ``"per_sample"`` (public code).
        entropy: ``"paper"`` or ``"public_code"``.
        c, fg_threshold, connectivity: Entropy parameters (see
            :func:`minilocal.criteria.spatial_entropy`).
        skip_layers: Filter: layers never selected (public code: ``(0, 1)``).
        last_row_limit: Filter: drop heads with a value above this in the last grid row
            (public code: 0.05).
        cache_dir: Folder for the resumable per-item cache (None: no cache).
        progress: Show a tqdm progress bar.
        model_id: The model's id (required with ``cache_dir``).
        revision: Model revision, if known.
        prompt_template: The prompt template used by ``attention_fn``.
        fingerprint: What else decides the attention (weights hash, dtype, quantization;
            :func:`minilocal.provenance.model_fingerprint`); part of the cache key.
        notes: Free text stored in the table.
        shard: ``(rank, world_size)``: compute only every ``world_size``-th distinct item
            (from ``rank``) into the cache and return None. Several processes (e.g. under
            ``accelerate launch``) fill one ``cache_dir`` this way; a final call without
            ``shard`` then finds every item cached and builds the table.

    Returns:
        The :class:`HeadTable` (source ``"measured"``), or None for a ``shard`` call.

    Book: ``book/04_selection.ipynb``.
    """
    n, repeats = _check_positive("n", n), _check_positive("repeats", repeats)
    top, k = _check_positive("top", top), _check_positive("k", k)
    if int(seed) != seed or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}",
                         "use seed >= 0 (repeat r draws with seed + r).")
    _lookup(_THRESHOLDS, elbow, "elbow mode")
    _lookup(_FOREGROUND, entropy, "entropy method")
    _lookup(_STRUCTURE_2D, connectivity, "connectivity")
    if len(dataset) == 0:
        raise InputError("find_heads got an empty dataset", "pass a dataset with items.")
    entropy_params: dict[str, Any] = {"connectivity": int(connectivity)}
    if entropy == "public_code":
        entropy_params.update(c=float(c), fg_threshold=float(fg_threshold))

    seeds = [int(seed) + r for r in range(repeats)]
    draws = [dataset.sample(n, s) for s in seeds]
    unique: dict[str, Any] = {}
    for draw in draws:
        for it in draw:
            unique.setdefault(it.item_id, it)

    cache = None
    if cache_dir is not None:
        if not model_id:
            raise InputError(
                "find_heads with cache_dir needs model_id",
                "pass model_id=adapter.model_id (it keys the cache so that models never mix).",
            )
        manifest = {
            "format": _CACHE_FORMAT,
            "version": _CACHE_VERSION,
            "model_id": model_id,
            "revision": revision,
            "prompt_template": prompt_template,
            "fingerprint": _jsonable(fingerprint),
            "entropy": entropy,
            "entropy_params": entropy_params,
        }
        cache = _ItemCache(cache_dir, manifest)

    todo = list(unique.items())
    if shard is not None:
        rank, world = int(shard[0]), int(shard[1])
        if not 0 <= rank < world:
            raise InputError(f"shard {shard} is not (rank, world_size) with 0 <= rank < world_size",
                             "pass shard=(process_index, num_processes).")
        if cache is None:
            raise InputError("find_heads with shard needs cache_dir",
                             "pass cache_dir: the shards meet in the cache.")
        todo = todo[rank::world]

    scores: dict[str, ItemScores] = {}
    shape = None
    n_cached = 0
    bar = tqdm(todo, total=len(todo), desc="find_heads", unit="item", disable=not progress)
    skipped: dict[str, str] = {}
    first_error: Exception | None = None
    for item_id, it in bar:
        sc = cache.load(item_id) if cache is not None else None
        if sc is None:
            try:
                attn = np.asarray(attention_fn(it))
            except Exception as err:  # one bad item never stops the search
                skipped[item_id] = _reason(err)
                first_error = first_error or err
                warnings.warn(f"find_heads: item {item_id!r} skipped: {skipped[item_id]}",
                              stacklevel=2)
                continue
            sc = item_scores(
                attn,
                entropy,
                c=c,
                fg_threshold=fg_threshold,
                connectivity=connectivity,
            )
            if cache is not None:
                cache.save(item_id, sc)
        else:
            n_cached += 1
        if shape is None:
            shape = sc.s_img.shape
        elif sc.s_img.shape != shape:
            raise InputError(
                f"item {item_id!r} has {sc.s_img.shape} (layers, heads), earlier items {shape}",
                "use one model for the whole search (and a fresh cache_dir per model).",
            )
        scores[item_id] = sc
        if cache is not None:
            bar.set_postfix(cached=n_cached, refresh=False)
    bar.close()
    if shard is not None:
        return None
    if not scores:
        raise InputError(
            f"every one of the {len(todo)} items failed; the first: {skipped[todo[0][0]]}",
            "fix that error (it is the same for every item?) and run again.",
        ) from first_error
    if skipped:
        draws = [[it for it in d if it.item_id not in skipped] for d in draws]

    ent_all, pass_all, taus = [], [], []
    for draw in draws:
        if not draw:  # every item of this repeat was skipped
            taus.append([])
            continue
        s = np.stack([scores[it.item_id].s_img for it in draw])  # [N, L, H]
        e = np.stack([scores[it.item_id].entropy for it in draw])  # [N, L, H]
        lr = np.stack([scores[it.item_id].last_row for it in draw])  # [N, L, H]
        passing = passes_s_img(
            s, elbow, skip_layers=skip_layers, last_row=lr, last_row_limit=last_row_limit
        )  # [N, L, H]
        tau = s_img_thresholds(s, elbow)  # [N]
        taus.append([float(tau[0])] if elbow == "mean" else [float(t) for t in tau])
        ent_all.append(e)
        pass_all.append(passing)
    # pooled over all lists: [R * N, L, H] (repeats may be shorter when items were skipped)
    freq = selection_frequency(np.concatenate(ent_all), np.concatenate(pass_all), top)
    heads = top_heads(freq, k)
    if len(heads) < k:
        warnings.warn(
            f"only {len(heads)} heads were ever among the lowest-entropy passing heads "
            f"(k={k}); check the attention maps (all uniform?) or the filters.",
            stacklevel=2,
        )
    settings = {
        "n": n,
        "n_drawn": len(draws[0]),
        "repeats": repeats,
        "seed": int(seed),
        "seeds": seeds,
        "top": top,
        "k": k,
        "elbow": elbow,
        "entropy": entropy,
        "entropy_params": entropy_params,
        "filters": {"skip_layers": [int(x) for x in skip_layers], "last_row_limit": last_row_limit},
        "dataset": getattr(dataset, "name", ""),
        "selection": "fixed",
    }
    if skipped:
        settings["skipped"] = dict(sorted(skipped.items()))
    return HeadTable(
        model_id=model_id,
        num_layers=shape[0],
        num_heads=shape[1],
        heads=heads,
        frequencies=freq,
        revision=revision,
        prompt_template=prompt_template,
        settings=settings,
        sample_ids=[[it.item_id for it in draw] for draw in draws],
        s_img_thresholds=taus,
        source="measured",
        notes=notes,
    )
