"""The Colab cells of the notebooks: how to open them, and one guarded install line.

The Colab notebooks (``notebooks/colab/*.ipynb``, one per chapter, and the recipe
``notebooks/colab_llava15_refcoco.ipynb``) are written by hand, except two cells that this
module writes, found by their cell id:

=================== ===========================================================================
``colab-open``      markdown: the *Open in Colab* badge and the link to the notebook's book
                    chapter once the repository is published; until then, how to upload the
                    notebook to Colab by hand
``colab-install``   code: ONE install line guarded by ``"google.colab" in sys.modules``, pinned
                    to the release tag; before publication, it installs from the repository
                    named by the environment variable ``MINILOCAL_REPO``
=================== ===========================================================================

The published repository has one source of truth, :data:`minilocal.exercises.REPOSITORY`
and :data:`minilocal.exercises.RELEASE_TAG`. The exercise and solution notebooks
(``python -m minilocal.exercises``) carry the same install cell and badge, from
:func:`install_cell_source` and :func:`colab_url` (defined in :mod:`minilocal.exercises`,
which this module builds on, and imported here). Once ``REPOSITORY`` is set, rewrite both
kinds of notebook and commit them (a test fails when they are stale)::

    python -m minilocal.colab            # write
    python -m minilocal.colab --check    # exit 1 if a notebook's Colab cells are stale
    python -m minilocal.exercises        # the exercise and solution notebooks

A notebook names its book chapter in its metadata: ``{"minilocal": {"chapter":
"book/01_attention.ipynb"}}``.

Book: ``book/06_your_model.ipynb`` (running the chapters on a GPU).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from . import exercises
from .exercises import BADGE, colab_url, install_cell_source
from .exercises import COLAB_PINS as COLAB_PINS  # re-exported: the install line's pins
from .exercises import EXTRAS as EXTRAS  # re-exported: part of the Colab cells' vocabulary

#: The notebooks with Colab cells, relative to the repository root.
NOTEBOOK_GLOBS = ("notebooks/colab/*.ipynb", "notebooks/colab_llava15_refcoco.ipynb")
#: Cell ids of the two cells this module writes.
OPEN_CELL, INSTALL_CELL = "colab-open", "colab-install"


def open_cell_source(path: str, chapter: str) -> str:
    """Markdown of the ``colab-open`` cell of the notebook ``path`` about ``chapter``.

    Book: ``book/06_your_model.ipynb``.
    """
    url = colab_url(path)
    gpu = "for the real model, choose a GPU first (*Runtime > Change runtime type > T4 GPU*)"
    if url is None:
        return "\n".join([
            "**Opening it in Colab.** Go to https://colab.research.google.com, choose *File >",
            f"Upload notebook* and pick this file (`{path}`); {gpu}. Its first",
            "code cell installs minilocal there from the repository named by",
            "`os.environ[\"MINILOCAL_REPO\"] = \"owner/name\"` (set it in a cell above it). Once the",
            "repository is published, an *Open in Colab* badge appears here.",
            "",
            f"The book chapter behind this notebook: `{chapter}`.",
        ])
    chapter_url = f"https://github.com/{exercises.REPOSITORY}/blob/{exercises.RELEASE_TAG}/{chapter}"
    return "\n".join([
        f"[![Open In Colab]({BADGE})]({url})",
        "",
        f"The badge opens this notebook in Colab; {gpu}. The book chapter behind it:",
        f"[`{chapter}`]({chapter_url}).",
    ])


def notebook_paths(root: str | Path = ".") -> list[Path]:
    """The notebooks with Colab cells under the repository ``root``, sorted.

    Book: ``book/06_your_model.ipynb``.
    """
    root = Path(root)
    return sorted({p for pattern in NOTEBOOK_GLOBS for p in root.glob(pattern)})


def chapter_of(nb) -> str:
    """The book chapter a notebook names in ``metadata["minilocal"]["chapter"]``.

    Raises:
        ValueError: The notebook names none.

    Book: ``book/06_your_model.ipynb``.
    """
    chapter = nb.metadata.get("minilocal", {}).get("chapter")
    if not chapter:
        raise ValueError('the notebook has no metadata {"minilocal": {"chapter": "book/..."}}')
    return chapter


def with_colab_cells(nb, path: str):
    """A copy of ``nb`` whose ``colab-open`` and ``colab-install`` cells are up to date.

    Args:
        nb: An ``nbformat`` notebook holding both cells (by id).
        path: The notebook's path relative to the repository root (for its Colab URL).

    Raises:
        ValueError: A cell is missing, or the chapter is not named in the metadata.

    Book: ``book/06_your_model.ipynb``.
    """
    import copy

    new = copy.deepcopy(nb)
    sources = {OPEN_CELL: open_cell_source(path, chapter_of(nb)),
               INSTALL_CELL: install_cell_source()}
    found = set()
    for cell in new.cells:
        if cell.get("id") in sources:
            cell.source = sources[cell.id]
            found.add(cell.id)
    missing = sorted(set(sources) - found)
    if missing:
        raise ValueError(f"{path}: no cell with id {missing}")
    return new


def generate(root: str | Path = ".", *, check: bool = False) -> list[Path]:
    """Rewrite the Colab cells of every notebook of :data:`NOTEBOOK_GLOBS` under ``root``.

    Args:
        root: The repository root.
        check: Write nothing; report which notebooks would change.

    Returns:
        The notebooks written (``check=False``) or stale (``check=True``).

    Book: ``book/06_your_model.ipynb``.
    """
    import nbformat

    root = Path(root)
    changed = []
    for path in notebook_paths(root):
        old = path.read_text(encoding="utf-8")
        nb = nbformat.reads(old, as_version=4)
        text = nbformat.writes(with_colab_cells(nb, path.relative_to(root).as_posix()),
                               version=4) + "\n"
        if text != old:
            changed.append(path)
            if not check:
                path.write_text(text, encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m minilocal.colab [--check]``; returns the exit status.

    Book: ``book/06_your_model.ipynb``.
    """
    ap = argparse.ArgumentParser(
        prog="python -m minilocal.colab",
        description="Write the Colab badge and install cells of the Colab notebooks.",
    )
    ap.add_argument("--root", default=".", help="repository root (default: .)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a notebook is stale")
    args = ap.parse_args(argv)
    paths = generate(args.root, check=args.check)
    return exercises.report_generated(paths, args.check, "minilocal.colab", "Colab cells")


if __name__ == "__main__":
    raise SystemExit(main())
