"""Evaluation: ground every item of a dataset, write per-item predictions, score them.

Predictions go to a JSON-lines file, one line per item, flushed as soon as the item is
done. A run that is interrupted (Ctrl-C, a lost Colab session) resumes where it stopped:
items already in the file are skipped, and a half-written last line is ignored. A
``<out>.meta.json`` file beside it records the model (a hash of its weights, its dtype and
quantization), heads, settings and SAM, and every line carries a hash of the same; resuming
with different ones is refused, so results never mix. An item that raises is recorded as
failed (a miss) and the run goes on.

Several processes (``accelerate launch``, see :func:`evaluate`) each take every
``world_size``-th item, write their own ``<out>.rank<r>`` file, and the main process merges
them in dataset order.

Book: ``book/05_grounding.ipynb`` and ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import CacheError, InputError
from .metrics import Scores, item_record
from .selection import _atomic_write_bytes, _reason

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None


def _shard_path(out: Path, rank: int, world_size: int) -> Path:
    return out if world_size == 1 else out.with_name(f"{out.name}.rank{rank}")


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _read_lines(path: Path) -> tuple[dict[str, dict], list[int]]:
    """Records by item id (later lines win) and the numbers of malformed lines.

    A last line without its newline (the run stopped while writing it) is neither.
    """
    records: dict[str, dict] = {}
    bad: list[int] = []
    if not path.exists():
        return records, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # the run stopped while writing this line
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("item_id"), str) \
                    or "box_iou" not in rec:
                bad.append(number)
                continue
            records[rec["item_id"]] = rec
    return records, bad


def read_predictions(path: str | os.PathLike) -> dict[str, dict]:
    """Records of a predictions file by item id (a truncated last line is ignored).

    Raises:
        CacheError: A line that is not a prediction record (not JSON, not an object, no
            ``item_id`` or ``box_iou``).
    """
    path = Path(path)
    records, bad = _read_lines(path)
    if bad:
        raise CacheError(
            f"{str(path)!r}: line {bad[0]} is not a prediction record"
            + (f" ({len(bad)} such lines)" if len(bad) > 1 else ""),
            "run the same `minilocal eval` command again: it drops those lines and "
            "recomputes their items; or delete the file to start over.",
        )
    return records


def _write_records(path: Path, records: Iterable[dict]) -> None:
    """Replace ``path`` with these records, one JSON line each (atomic: tmp + rename)."""
    data = "".join(json.dumps(rec) + "\n" for rec in records).encode("utf-8")
    _atomic_write_bytes(path, data)


def run_key(meta: dict) -> str:
    """Short hash of :func:`run_meta`, stored in every prediction line."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def _differences(found: dict, meta: dict) -> str:
    keys = sorted(k for k in set(found) | set(meta) if found.get(k) != meta.get(k))
    return "; ".join(f"{k}: {found.get(k)!r} then, {meta.get(k)!r} now" for k in keys)


def _check_meta(out: Path, meta: dict, records: dict[str, dict]) -> None:
    """Refuse to add to predictions made with other settings; (re)write a missing meta."""
    key = run_key(meta)
    mpath = _meta_path(out)
    found = None
    if mpath.exists():
        try:
            found = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            found = None
        if not isinstance(found, dict):
            found = None
            warnings.warn(f"{mpath} is empty or corrupt; it is rebuilt from the prediction "
                          "lines, which carry their settings' hash", stacklevel=3)
    if found is not None and found != meta:
        raise CacheError(
            f"{str(out)!r} holds predictions made with other settings: "
            f"{_differences(found, meta)}",
            "pass a new output path (-o), or delete the old file (and its .meta.json) to "
            "start over.",
        )
    other = [i for i, rec in records.items() if rec.get("run", None if found is None else key)
             != key]
    if other:
        rec = records[other[0]]
        what = ("no settings hash" if "run" not in rec else
                f"settings hash {rec['run']!r}, these settings give {key!r}")
        raise CacheError(
            f"{str(out)!r} holds {len(other)} predictions made with other or unknown settings "
            f"(item {other[0]!r}: {what})"
            + ("; its .meta.json is missing or corrupt" if found is None else ""),
            "pass a new output path (-o), or delete the old file to start over.",
        )
    if found is None:
        mpath.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(mpath, json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold ``<path>.lock`` so that two runs never write one predictions file."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+", encoding="utf-8") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise CacheError(
                    f"another evaluation (process {holder}) is writing {str(path)!r}",
                    "wait for it to finish, or give this one another output path (-o).",
                ) from None
            except OSError:  # a file system without locks (some network mounts)
                pass
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def run_meta(grounder, dataset) -> dict[str, Any]:
    """What the predictions depend on: the model's weights, dtype and quantization (a
    hash, :func:`minilocal.provenance.model_fingerprint`), heads, prompt template, step-4
    settings, and SAM (its weights' hash)."""
    from .provenance import model_fingerprint, sam_fingerprint

    adapter = grounder.adapter
    return {
        "model_id": adapter.model_id(),
        "model": model_fingerprint(grounder.model),
        "heads": [f"L{layer}H{head}" for layer, head in grounder.heads],
        "template": getattr(adapter, "template", None),
        "settings": {k: v for k, v in grounder.settings.items()},
        "sam": sam_fingerprint(grounder.sam),
        "mask_prompt": grounder.mask_prompt,
        "multimask": grounder.multimask,
        "dataset": getattr(dataset, "name", ""),
    }


def _record(grounder, it, key: str) -> dict:
    """One item's prediction line; an item that raises gives a failed line (a miss)."""
    try:
        res = grounder.ground(it.image, it.expr)
        rec = {
            "item_id": it.item_id,
            "expr": it.expr,
            "gt_box": [float(v) for v in it.box],
            "pred_box": None if res.box is None else [float(v) for v in res.box],
            "mask_source": res.mask_source,
            "reason": res.reason,
            **item_record(res.box, it.box, res.mask, it.mask),
        }
    except Exception as err:  # one bad item never stops an evaluation
        try:
            gt_box, gt_mask = it.box, it.mask
            scores = item_record(None, gt_box, None, gt_mask)
            gt = [float(v) for v in gt_box]
        except Exception:
            scores, gt = {"box_iou": 0.0}, None
        rec = {
            "item_id": it.item_id,
            "expr": str(getattr(it, "expr", "")),
            "gt_box": gt,
            "pred_box": None,
            "mask_source": None,
            "reason": _reason(err),
            "failed": True,
            **scores,
        }
        warnings.warn(f"eval: item {it.item_id!r} failed ({rec['reason']}); recorded as a "
                      "miss, and tried again on the next resume", stacklevel=3)
    rec["run"] = key
    return rec


def evaluate(
    grounder,
    dataset,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Scores:
    """Ground every item, append one JSON line per item to ``out``, return the scores.

    Resuming: lines already in ``out`` are kept and their items skipped, but only when
    they were made with the same model weights, heads and settings (``<out>.meta.json``
    and a settings hash in every line say so; anything else raises
    :class:`~minilocal.errors.CacheError`). A malformed line is dropped and its item
    recomputed; the file ends in dataset order either way. Two runs cannot write one file
    at once (a lock, ``<out>.lock``).

    An item that raises (an unreadable image, an image SAM cannot take) is written as a
    failed line with its reason (``"failed": true``) and counts as a miss; the run goes
    on, and a resume tries that item again.

    Args:
        grounder: A :class:`minilocal.pipeline.Grounder`.
        dataset: A :class:`minilocal.data.GroundingDataset` (or any sequence of items).
        out: Predictions file (JSON lines). Existing lines are kept and their items skipped.
        limit: Only the first ``limit`` items (a quick look; at least 1).
        progress: Show a progress bar.
        rank, world_size: This process's share: items ``rank::world_size``, written to
            ``<out>.rank<rank>`` when ``world_size > 1`` (merge with
            :func:`merge_predictions`).

    Returns:
        :class:`~minilocal.metrics.Scores` of the items of this share.

    Book: ``book/05_grounding.ipynb``.
    """
    out = Path(out)
    if limit is not None and (int(limit) != limit or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}",
                         "use limit >= 1, or limit=None for every item.")
    if out.is_dir():
        raise InputError(f"the predictions path {str(out)!r} is a folder",
                         "give a file path, e.g. -o preds.jsonl.")
    items = list(dataset)[:limit] if limit is not None else list(dataset)
    mine = items[rank::world_size]
    meta = run_meta(grounder, dataset)
    key = run_key(meta)
    path = _shard_path(out, rank, world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path):
        records, bad = _read_lines(path)
        if rank == 0:
            _check_meta(out, meta, records)
        elif any(rec.get("run", key) != key for rec in records.values()):
            raise CacheError(f"{str(path)!r} holds predictions made with other settings",
                             "pass a new output path (-o), or delete the old files.")
        if bad:
            warnings.warn(f"{path}: {len(bad)} malformed lines (first: line {bad[0]}) dropped; "
                          "their items are recomputed", stacklevel=2)
        # start from a clean file: no malformed line, no half-written last line
        _write_records(path, records.values())
        todo = [it for it in mine
                if it.item_id not in records or records[it.item_id].get("failed")]
        with open(path, "a", encoding="utf-8") as f:
            bar = tqdm(todo, desc=f"eval[{rank}]" if world_size > 1 else "eval", unit="item",
                       disable=not progress, initial=len(mine) - len(todo), total=len(mine))
            for it in bar:
                rec = _record(grounder, it, key)
                records[rec["item_id"]] = rec
                f.write(json.dumps(rec) + "\n")
                f.flush()
        # dataset order, one line per item (a retried item replaces its failed line)
        ids = [it.item_id for it in mine]
        known = set(ids)
        ordered = [records[i] for i in ids if i in records]
        ordered += [rec for i, rec in records.items() if i not in known]
        _write_records(path, ordered)
    if mine and all(records[it.item_id].get("failed") for it in mine):
        raise InputError(
            f"every one of the {len(mine)} items failed; the first: "
            f"{records[mine[0].item_id]['reason']}",
            "fix that error (it is the same for every item?) and run the same command again: "
            "failed items are tried again.",
        )
    return Scores.from_records(records[it.item_id] for it in mine)


def merge_predictions(out: str | os.PathLike, item_ids: Iterable[str], world_size: int) -> Path:
    """Merge the ``<out>.rank<r>`` files of ``world_size`` processes into ``out``.

    Lines are written in the order of ``item_ids``; items found in no shard are reported.

    Returns:
        The path of the merged file.
    """
    out = Path(out)
    if world_size == 1:
        return out
    merged: dict[str, dict] = read_predictions(out)
    for r in range(world_size):
        merged.update(read_predictions(_shard_path(out, r, world_size)))
    ids = list(item_ids)
    missing = [i for i in ids if i not in merged]
    if missing:
        raise CacheError(
            f"{len(missing)} items have no prediction in any shard (first: {missing[0]!r})",
            "run the same evaluation command again: it resumes and fills them in.",
        )
    _write_records(out, (merged[i] for i in ids))
    return out


def score_predictions(path: str | os.PathLike, item_ids: Iterable[str] | None = None) -> Scores:
    """Scores of a predictions file (optionally restricted to ``item_ids``, in that order)."""
    records = read_predictions(path)
    if item_ids is None:
        return Scores.from_records(records.values())
    return Scores.from_records(records[i] for i in item_ids if i in records)

