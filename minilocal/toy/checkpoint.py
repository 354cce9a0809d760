"""Checkpoints that let an interrupted training run resume (``train`` and ``train_sam``).

A run saves its whole state (model, optimiser, logs, next step) to one file in its output
folder; the same command run again loads it and continues. The batch of a step depends on
the step alone in both trainings, so a resumed run ends with the weights of an
uninterrupted one. A checkpoint records the run's configuration, and resuming with other
settings is refused with an error that names the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

#: File in the output folder that holds an unfinished run (removed when the run ends).
CHECKPOINT = "checkpoint.pt"


def jsonable(obj):
    """``obj`` as it reads back from JSON (tuples become lists): for comparisons."""
    return json.loads(json.dumps(obj))


def save(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (an interrupted write keeps the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | Path, config: dict) -> dict:
    """The unfinished run saved at ``path``; it must have been started with ``config``.

    Args:
        path: The checkpoint file.
        config: The configuration of the run that wants to resume (JSON-able dict).

    Raises:
        ValueError: The checkpoint's run had other settings (names them and the fix).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, now = state["config"], jsonable(config)
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(
            f"{path} holds an unfinished run started with other settings ({', '.join(diff)}"
            f" differ). Pass the same options to resume it, or delete {path} to start afresh.")
    return state
