"""Evaluation: ground every item of a dataset, write per-item predictions, score them.

Predictions go to a JSON-lines file, one line per item, flushed as soon as the item is
done. A run that is interrupted (Ctrl-C, a lost Colab session) resumes where it stopped:
items already in the file are skipped, and a half-written last line is ignored. A
``<out>.meta.json`` file beside it records the model, heads and settings; resuming with
different ones is refused, so results never mix.

Several processes (``accelerate launch``, see :func:`evaluate`) each take every
``world_size``-th item, write their own ``<out>.rank<r>`` file, and the main process merges
them in dataset order.

Book: ``book/05_grounding.ipynb`` and ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import CacheError
from .metrics import Scores, item_record


def _shard_path(out: Path, rank: int, world_size: int) -> Path:
    return out if world_size == 1 else out.with_name(f"{out.name}.rank{rank}")


def read_predictions(path: str | os.PathLike) -> dict[str, dict]:
    """Records of a predictions file by item id (a truncated last line is ignored)."""
    path = Path(path)
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the run stopped while writing this line
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[rec["item_id"]] = rec
    return records


def _truncate_partial_line(path: Path) -> None:
    """Cut a half-written last line, so appending starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def _check_meta(out: Path, meta: dict) -> None:
    mpath = out.with_name(out.name + ".meta.json")
    if mpath.exists():
        found = json.loads(mpath.read_text(encoding="utf-8"))
        if found != meta:
            diff = {k: (found.get(k), meta.get(k)) for k in set(found) | set(meta)
                    if found.get(k) != meta.get(k)}
            raise CacheError(
                f"{str(out)!r} holds predictions made with other settings: {diff}",
                "pass a new output path (-o), or delete the old file to start over.",
            )
    else:
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def run_meta(grounder, dataset) -> dict[str, Any]:
    """What the predictions depend on: model, heads, prompt template, step-4 settings."""
    adapter = grounder.adapter
    return {
        "model_id": adapter.model_id(),
        "heads": [f"L{layer}H{head}" for layer, head in grounder.heads],
        "template": getattr(adapter, "template", None),
        "settings": {k: v for k, v in grounder.settings.items()},
        "sam": None if grounder.sam is None else type(grounder.sam).__name__,
        "mask_prompt": grounder.mask_prompt,
        "multimask": grounder.multimask,
        "dataset": getattr(dataset, "name", ""),
    }


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

    Args:
        grounder: A :class:`minilocal.pipeline.Grounder`.
        dataset: A :class:`minilocal.data.GroundingDataset` (or any sequence of items).
        out: Predictions file (JSON lines). Existing lines are kept and their items skipped.
        limit: Only the first ``limit`` items (a quick look).
        progress: Show a progress bar.
        rank, world_size: This process's share: items ``rank::world_size``, written to
            ``<out>.rank<rank>`` when ``world_size > 1`` (merge with
            :func:`merge_predictions`).

    Returns:
        :class:`~minilocal.metrics.Scores` of the items of this share.

    Book: ``book/05_grounding.ipynb``.
    """
    out = Path(out)
    items = list(dataset)[:limit] if limit is not None else list(dataset)
    mine = items[rank::world_size]
    if rank == 0:
        _check_meta(out, run_meta(grounder, dataset))
    path = _shard_path(out, rank, world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_predictions(path)
    _truncate_partial_line(path)
    todo = [it for it in mine if it.item_id not in done]
    with open(path, "a", encoding="utf-8") as f:
        bar = tqdm(todo, desc=f"eval[{rank}]" if world_size > 1 else "eval", unit="item",
                   disable=not progress, initial=len(mine) - len(todo), total=len(mine))
        for it in bar:
            image = it.image
            res = grounder.ground(image, it.expr)
            gt_mask = it.mask
            rec = {
                "item_id": it.item_id,
                "expr": it.expr,
                "gt_box": [float(v) for v in it.box],
                "pred_box": None if res.box is None else [float(v) for v in res.box],
                "mask_source": res.mask_source,
                "reason": res.reason,
                **item_record(res.box, it.box, res.mask, gt_mask),
            }
            f.write(json.dumps(rec) + "\n")
            f.flush()
    records = read_predictions(path)
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
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in ids:
            f.write(json.dumps(merged[i]) + "\n")
    os.replace(tmp, out)
    return out


def score_predictions(path: str | os.PathLike, item_ids: Iterable[str] | None = None) -> Scores:
    """Scores of a predictions file (optionally restricted to ``item_ids``, in that order)."""
    records = read_predictions(path)
    if item_ids is None:
        return Scores.from_records(records.values())
    return Scores.from_records(records[i] for i in item_ids if i in records)

