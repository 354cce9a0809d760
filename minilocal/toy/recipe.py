"""The shipped shapes LVLM's whole training recipe as one resumable command.

``python -m minilocal.toy.recipe --out DIR`` runs the stages of :data:`SHIPPED` one after
the other, each with :func:`minilocal.toy.train.train` in ``DIR/<stage>``, each starting
from the one before (``--init``) on fresh training items (``--start-index``). The last
stage's folder is the model (``Grounder.from_pretrained(DIR/<last stage>)``). A stage whose
folder already holds a finished model is skipped and an interrupted stage resumes from its
checkpoint, so running the same command again after a crash (or a lost Colab session)
continues where it stopped. ``--print`` lists the stages' ``train`` commands instead.

The stages are the exact commands that made ``minilocal/assets/shapes-lvlm`` (a test
checks them against the configs recorded in its ``training_report.json``); with the same
thread counts on a CPU and the same torch they give the same weights. Each stage is one
call of ``python -m minilocal.toy.train``; the recipe adds only the chaining.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from . import train as T
from .checkpoint import CHECKPOINT


@dataclass(frozen=True)
class Stage:
    """One stage of a recipe.

    Attributes:
        name: Folder name of the stage inside the recipe's output folder.
        args: Its ``python -m minilocal.toy.train`` options (without ``--out`` and
            ``--init``, which the recipe adds: the stage before).
    """

    name: str
    args: tuple[str, ...]


#: Options shared by every stage of the shipped recipe.
_SHARED = ("--layers", "4", "--patch-init-std", "0.2", "--plant-weight", "2",
           "--probe-items", "24")
_THREE = ("--plant", "L1H3,L2H5,L3H0", "--steps", "1000", "--background-dropout", "0.5")

#: The stages that made the shipped model (``minilocal/assets/shapes-lvlm``), in order.
SHIPPED: tuple[Stage, ...] = (
    Stage("S1", _SHARED + ("--text-steps", "1500", "--plant", "L1H3,L2H5", "--steps", "1500",
                           "--threads", "1")),
    Stage("M1", _SHARED + ("--start-index", "24000", "--plant", "L1H3,L2H5", "--steps", "1000",
                           "--background-dropout", "0.5", "--threads", "1")),
    Stage("B3", _SHARED + ("--start-index", "40000") + _THREE + ("--threads", "1")),
    Stage("B4", _SHARED + ("--start-index", "56000") + _THREE + ("--threads", "2")),
    Stage("B5", _SHARED + ("--start-index", "72000") + _THREE + ("--threads", "2")),
    Stage("B6", _SHARED + ("--start-index", "88000") + _THREE + ("--threads", "2")),
    Stage("E1", _SHARED + ("--start-index", "104000") + _THREE
          + ("--plant-sharpen", "0.05", "--threads", "2")),
    Stage("E2", _SHARED + ("--start-index", "120000") + _THREE
          + ("--plant-sharpen", "0.05", "--threads", "2")),
)


def stage_argv(stages: tuple[Stage, ...], out: str | Path, i: int) -> list[str]:
    """The ``train`` options of stage ``i`` of ``stages`` run into ``out``."""
    argv = ["--out", str(Path(out) / stages[i].name)]
    if i > 0:
        argv += ["--init", str(Path(out) / stages[i - 1].name)]
    return argv + list(stages[i].args)


def finished(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished stage (its model and report, no checkpoint)."""
    folder = Path(folder)
    return ((folder / "training_report.json").is_file()
            and (folder / "model.safetensors").is_file()
            and not (folder / CHECKPOINT).exists())


def run(stages: tuple[Stage, ...], out: str | Path, progress: bool = True,
        checkpoint_every: int = 100) -> Path:
    """Run ``stages`` into ``out`` (skipping finished ones, resuming an interrupted one).

    Args:
        stages: The recipe (:data:`SHIPPED` for the shipped model).
        out: Output folder; stage ``s`` is saved in ``out/s.name``.
        progress: Show progress bars.
        checkpoint_every: Steps between checkpoints of each stage.

    Returns:
        The last stage's folder: the model.
    """
    if not stages:
        raise ValueError("the recipe has no stages: pass at least one")
    for i, stage in enumerate(stages):
        argv = stage_argv(stages, out, i)
        folder = Path(out) / stage.name
        if finished(folder):
            print(f"[{i + 1}/{len(stages)}] {stage.name}: done before, skipped ({folder})")
            continue
        command = f"python -m minilocal.toy.train {shlex.join(argv)}"
        print(f"[{i + 1}/{len(stages)}] {stage.name}: {command}", flush=True)
        cfg = T._parse(argv)[0]
        t0 = time.time()
        T.train(cfg, folder, progress=progress, checkpoint_every=checkpoint_every,
                command=command)
        print(f"[{i + 1}/{len(stages)}] {stage.name}: {time.time() - t0:.0f} s", flush=True)
    return Path(out) / stages[-1].name


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see ``--help``)."""
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.toy.recipe",
        description="Train the shipped shapes LVLM: all its stages, resumable.")
    ap.add_argument("--out", required=True, help="output folder (one sub-folder per stage)")
    ap.add_argument("--print", action="store_true", dest="print_only",
                    help="print the stages' train commands and stop")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="steps between checkpoints of a stage (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.print_only:
        for i in range(len(SHIPPED)):
            print("python -m minilocal.toy.train " + shlex.join(stage_argv(SHIPPED, a.out, i)))
        return
    model = run(SHIPPED, a.out, checkpoint_every=a.checkpoint_every)
    print(f"model: {model}\nits heads and held-out figures: python -m minilocal.toy.evaluate "
          f"--model {model} --search --cache-dir {model}_cache -o {model}/evaluation_report.json")


if __name__ == "__main__":
    main()
