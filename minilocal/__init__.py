"""minilocal: localization heads of vision-language models, as a book and a package.

The package follows the four steps of the slides, one module per step:

1. :mod:`minilocal.attention`  - attention of the last text token over the image tokens
2. :mod:`minilocal.criteria`   - S_img with its elbow, and spatial entropy
3. :mod:`minilocal.selection`  - selection frequency over many samples; the head table
4. :mod:`minilocal.grounding`  - pseudo mask, convex hull and box;
   :mod:`minilocal.segmentation` - SAM turns the box into a mask;
   :mod:`minilocal.metrics`    - Acc@0.5, mIoU, cIoU

Model families plug in through :mod:`minilocal.adapters`; the grid-to-pixel map is
:mod:`minilocal.geometry`; :class:`Grounder` runs the whole method. The names below are
imported on first use, so ``import minilocal`` stays fast.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_LAZY = {
    "Grounder": "minilocal.pipeline",
    "load_model": "minilocal.models",
    "get_adapter": "minilocal.adapters",
    "HeadTable": "minilocal.selection",
    "find_heads": "minilocal.selection",
    "ground": "minilocal.grounding",
    "load_image": "minilocal.images",
    "load_dataset": "minilocal.data",
    "book_setup": "minilocal.exercises",
}

__all__ = ["__version__", "setup", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minilocal' has no attribute {name!r}")


def setup(threads: int | None = None, verbose: bool = True) -> dict:
    """One call at the top of a notebook (local, Colab or the book): settings and a summary.

    Sets plotly's renderer for notebooks and the built book
    (:func:`minilocal.exercises.book_setup`), the number of torch CPU threads (default:
    all cores, at most 8), and reports what this machine offers.

    Args:
        threads: torch CPU threads; None keeps min(8, cores).
        verbose: Print a one-line summary.

    Returns:
        ``{"minilocal", "torch", "transformers", "device", "colab", "threads"}``.

    Book: every chapter's first code cell.
    """
    import os
    import sys

    import torch
    import transformers

    from .exercises import book_setup

    book_setup()
    torch.set_num_threads(threads or min(8, os.cpu_count() or 1))
    info = {
        "minilocal": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "colab": "google.colab" in sys.modules,
        "threads": torch.get_num_threads(),
    }
    if verbose:
        gpu = f" ({torch.cuda.get_device_name(0)})" if info["device"] == "cuda" else ""
        print(f"minilocal {__version__} | torch {info['torch']} | transformers "
              f"{info['transformers']} | {info['device']}{gpu} | {info['threads']} threads")
    return info
