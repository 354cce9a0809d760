"""RefCOCO, RefCOCO+ and RefCOCOg in minilocal's one item format, from any of three sources.

============  ==========================================  ===========  ================
source        files                                       images       splits
============  ==========================================  ===========  ================
``refer``     ``<root>/<dataset>/refs(<splitBy>).p`` +    COCO         all, every
              ``instances.json`` (the refer toolkit)      train2014    splitBy
``jxu124``    ``jxu124/refcoco|refcocoplus|refcocog``     COCO         all (unc / umd)
              parquet                                     train2014
``lmms-lab``  ``lmms-lab/RefCOCO|RefCOCOplus|RefCOCOg``   embedded     no train
              parquet
============  ==========================================  ===========  ================

:func:`load_refcoco` finds which one a folder holds and reads it; each item is one referring
expression with its xyxy box, and its image and mask load on access. The refer and jxu124
sources give the same item ids (``"refcoco/unc/val/ref<ref_id>/sent<sent_id>"``), so head
tables and prediction files made from one match the other. The details of each format, and
the public sources they were taken from, are in :mod:`minilocal.data.refer` and
:mod:`minilocal.data.parquet`.

The head search samples N train items with :meth:`GroundingDataset.sample` (seeded); the
train split is in the refer and jxu124 sources only.

Book: ``book/05_grounding.ipynb`` (evaluation data); the train split feeds the head search of
``book/04_selection.ipynb``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import DatasetError
from ..items import GroundingDataset
from .parquet import (
    JXU124_REPOS,
    LMMS_REPOS,
    _pyarrow_parquet,
    all_parquet_files,
    load_jxu124,
    load_lmms_lab,
)
from .refer import (
    COCO_TRAIN2014_URL,
    REFER_DATA_URL,
    ExprField,
    canonical_dataset,
    check_expr_field,
    load_refer,
    resolve_split_by,
)

#: Where the items come from (see the module docstring).
Source = Literal["refer", "jxu124", "lmms-lab"]
SOURCES: tuple[str, ...] = ("refer", "jxu124", "lmms-lab")


def _layouts(dataset: str) -> str:
    return (
        f"expected one of: (refer) {dataset}/refs(<splitBy>).p and {dataset}/instances.json "
        f"from {REFER_DATA_URL.format(name=dataset)}; (jxu124) a local copy of "
        f"{JXU124_REPOS[dataset]}; (lmms-lab) a local copy of {LMMS_REPOS[dataset]} "
        "(`huggingface-cli download <repo> --repo-type dataset --local-dir <folder>`). The "
        f"refer and jxu124 sources also need the COCO train2014 images ({COCO_TRAIN2014_URL})."
    )


def detect_source(dataset: str, root: str | os.PathLike) -> Source:
    """Which source a folder holds: refer toolkit files, or which parquet copy.

    ``refer`` when ``<root>/<dataset>/refs(*).p`` (or ``<root>/refs(*).p`` in a folder
    named after the dataset) exists; otherwise the columns of the first parquet file found
    decide: ``raw_anns`` + ``sentences`` is jxu124, ``question_id`` + ``answer`` + ``image``
    is lmms-lab.

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        root: The folder to look into.

    Raises:
        DatasetError: Missing folder, or nothing recognisable in it.

    Book: ``book/05_grounding.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {str(root)!r}", _layouts(dataset))
    if any((root / dataset).glob("refs(*).p")) or (
        root.name == dataset and any(root.glob("refs(*).p"))
    ):
        return "refer"
    files = all_parquet_files(root)
    if files:
        pq = _pyarrow_parquet()
        try:
            names = set(pq.read_schema(files[0]).names)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DatasetError(
                f"cannot read {str(files[0])!r} as parquet ({exc})", _layouts(dataset)
            ) from exc
        if {"raw_anns", "sentences"} <= names:
            return "jxu124"
        if {"question_id", "answer", "image"} <= names:
            return "lmms-lab"
        raise DatasetError(
            f"{str(files[0])!r} has columns {sorted(names)}, of no known RefCOCO copy",
            _layouts(dataset),
        )
    if (root / dataset).is_dir():
        raise DatasetError(
            f"no refs(<splitBy>).p in {str(root / dataset)!r}", _layouts(dataset)
        )
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DatasetError(
        f"no {dataset} files in {str(root)!r} (found: {found or 'nothing'})", _layouts(dataset)
    )


def load_refcoco(
    dataset: Literal["refcoco", "refcoco+", "refcocog"],
    split: str,
    *,
    root: str | os.PathLike,
    source: Source | None = None,
    image_dir: str | os.PathLike | None = None,
    split_by: str | None = None,
    expr_field: ExprField = "raw",
    check_images: bool = False,
) -> GroundingDataset:
    """One split of RefCOCO / RefCOCO+ / RefCOCOg as :class:`GroundingItem` s.

    One item per referring expression (sentence), box xyxy in pixels, image and mask read on
    access. Example::

        val = load_refcoco("refcoco", "val", root="data/refer", image_dir="data/train2014")
        calib = load_refcoco("refcoco", "train", root="data/refer").sample(1000, seed=0)

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        split: "train", "val", "testA", "testB" (RefCOCO, RefCOCO+ with splitBy unc);
            "train", "val", "test" (RefCOCOg umd, RefCOCO google); lmms-lab has no "train".
        root: The folder with the files (see :func:`detect_source`).
        source: "refer", "jxu124" or "lmms-lab"; None finds it from the files.
        image_dir: The COCO train2014 folder (refer and jxu124); by default looked for
            under ``root``. Not used by lmms-lab (images embedded).
        split_by: "unc", "google" or "umd" (refer only; the parquet copies have one each).
            Default: unc for RefCOCO and RefCOCO+, umd for RefCOCOg (the paper's tables).
        expr_field: "raw" (default: the text as typed, the only form lmms-lab has) or "sent"
            (the refer toolkit's lower-cased, tokenised form; refer and jxu124 only).
        check_images: refer and jxu124: check that every image file exists now (otherwise
            only the first; a missing one raises when its item's image is read).

    Returns:
        The items, in the source's order, with seeded sampling (``.sample(n, seed)``).

    Raises:
        DatasetError: Unknown dataset, source, split or splitBy; missing folder or file;
            a refs pickle holding forbidden objects; a train split from lmms-lab.

    Book: ``book/05_grounding.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    check_expr_field(expr_field)
    if split_by is not None:
        resolve_split_by(dataset, split_by)  # an unknown splitBy fails before any file is read
    if source is None:
        source = detect_source(dataset, root)
    if source not in SOURCES:
        raise DatasetError(
            f"unknown source {source!r}", f"use source= one of {SOURCES}, or None to detect it."
        )
    if source == "lmms-lab":
        if expr_field != "raw":
            raise DatasetError(
                f"{LMMS_REPOS[dataset]} holds only the raw expressions, not {expr_field!r}",
                "use expr_field='raw', or the refer / jxu124 source for the 'sent' form.",
            )
        return load_lmms_lab(dataset, split, root=root, split_by=split_by)
    loader = {"refer": load_refer, "jxu124": load_jxu124}[source]
    return loader(
        dataset,
        split,
        root=root,
        image_dir=image_dir,
        split_by=split_by,
        expr_field=expr_field,
        check_images=check_images,
    )
