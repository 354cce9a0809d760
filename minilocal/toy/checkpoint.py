"""Checkpoints that let an interrupted training run resume (``train`` and ``train_sam``).

A run saves its whole state (model, optimiser, report so far, next step) to one file in its
output folder; the same command run again loads it and continues. The batch of a step
depends on the step alone in both trainings, so a resumed run ends with the weights of an
uninterrupted one. A checkpoint records the run's configuration, and resuming with other
settings is refused with an error that names the fix.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

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


class Checkpoint:
    """The checkpoint of one training run in its output folder.

    Usage: build it before the model; if ``state`` is set, load ``state["model"]`` into the
    model; build the optimiser; :meth:`resume` (restores the optimiser and the report's logs,
    returns the first step); call :meth:`save` when :meth:`due`; :meth:`finish` once the
    run's results are written.

    Args:
        out: The run's output folder (None: no checkpoints).
        config: The run's configuration (JSON-able dict); a checkpoint of other settings is
            refused.
        every: Steps between checkpoints (0: none).
    """

    def __init__(self, out: str | Path | None, config: dict, every: int):
        if every < 0:
            raise ValueError(f"--checkpoint-every {every}: pass a number of steps "
                             "(0: no checkpoints)")
        self.every = every
        self.config = jsonable(config)
        self.path = Path(out) / CHECKPOINT if out is not None and every else None
        #: The saved state of an unfinished run to resume, or None (a fresh run).
        self.state = (load(self.path, config)
                      if self.path is not None and self.path.is_file() else None)
        self.t0 = time.time()

    def resume(self, optimizer, report: dict, keys: tuple[str, ...], total: int) -> tuple[int, dict]:
        """Restore ``optimizer`` and ``report[key]`` for ``keys``; start the clock.

        Returns:
            (first step to run, the extra values given to :meth:`save`); (0, {}) for a
            fresh run. The report's ``resumed_at`` lists the steps where runs resumed.
        """
        if self.state is None:
            self.t0 = time.time()
            return 0, {}
        optimizer.load_state_dict(self.state["optimizer"])
        saved = self.state["report"]
        for key in keys + ("resumed_at",):
            if key in saved:
                report[key] = saved[key]
        first = self.state["step"]
        report["resumed_at"] = report.get("resumed_at", []) + [first]
        self.t0 = time.time() - self.state["elapsed_s"]
        tqdm.write(f"resuming {self.path} at step {first} of {total}")
        return first, self.state["extra"]

    def elapsed(self) -> float:
        """Seconds of training so far, over all the runs that resumed."""
        return time.time() - self.t0

    def due(self, step: int, total: int) -> bool:
        """Whether to save after step index ``step`` (not after the last one)."""
        return (self.path is not None and step + 1 < total
                and (step + 1) % self.every == 0)

    def save(self, next_step: int, model, optimizer, report: dict, **extra) -> None:
        """Save the run's state; a resumed run starts at ``next_step``."""
        if self.path is not None:
            save(self.path, {"config": self.config, "step": next_step,
                             "elapsed_s": self.elapsed(), "extra": jsonable(extra),
                             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "report": jsonable(report)})

    def finish(self) -> None:
        """Remove the checkpoint (the run's results are written)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
