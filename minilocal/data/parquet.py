"""RefCOCO, RefCOCO+ and RefCOCOg from the Hugging Face parquet copies.

Two public copies are read, each from a local copy of its dataset repository
(``huggingface-cli download <repo> --repo-type dataset --local-dir <root>``); these
loaders download nothing (:func:`minilocal.data.download.refcoco_sample` fetches a small
jxu124 sample on request).

**jxu124** (``jxu124/refcoco``, ``jxu124/refcocoplus``, ``jxu124/refcocog``): the refer
toolkit's refs, one row per ref (object), no images (they need the COCO train2014 folder).
What this loader relies on, from the dataset cards' ``dataset_info`` (README.md of each repo)
and the repos' file listings:

- files ``data/<file split>-00000-of-00001-<hash>.parquet``; file splits ``train``,
  ``validation``, ``test``, ``testB`` (RefCOCO, RefCOCO+) and ``train``, ``validation``,
  ``test`` (RefCOCOg). Row counts on the cards (RefCOCO 42404 / 3811 / 1975 / 1810, RefCOCO+
  42278 / 3805 / 1975 / 1798, RefCOCOg 42226 / 2573 / 5023) are the ref counts of the unc
  (RefCOCO/+) and umd (RefCOCOg) splits, so file split ``test`` of RefCOCO/+ is ``testA``.
  Each row also carries the refer split name in its ``split`` column; rows are kept only
  where it equals the split asked for.
- columns: ``sent_ids`` list<int64>, ``file_name`` string, ``ann_id`` int64, ``ref_id``
  int64, ``image_id`` int64, ``split`` string, ``sentences`` list<struct<raw: string, sent:
  string, sent_id: int64, tokens: list<string>>>, ``category_id`` int64, ``raw_anns``
  string, ``raw_image_info`` string, ``raw_sentences`` string, ``image_path`` string,
  ``bbox`` list<double>, ``captions`` list<string>, ``global_image_id`` string,
  ``anns_id`` string.
- ``raw_anns`` is the COCO annotation as a JSON string (public code reads its ``bbox`` as
  [x, y, w, h]); ``raw_image_info`` is the COCO image entry as a JSON string (shown in a
  Hugging Face tutorial: ``{"license": 3, "file_name": "COCO_train2014_000000581719.jpg",
  ..., "height": 357, "width": 500, ...}``); ``image_path`` is
  ``coco/train2014/COCO_train2014_<id>.jpg``; the ``bbox`` column is already xyxy (a
  tutorial prints ``[265.35, 143.46, 381.84000000000003, 453.03]``).
- Used here: ``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences``,
  ``category_id``, ``raw_anns`` (box and segmentation), ``raw_image_info`` (size, file
  name), ``image_path``; ``bbox`` only when ``raw_anns`` has no box. Not used:
  ``raw_sentences``, ``captions``, ``global_image_id``, ``anns_id``, ``file_name``.

Items get the same ids as the refer toolkit loader, so one sentence has one id whichever
source it came from.

**lmms-lab** (``lmms-lab/RefCOCO``, ``lmms-lab/RefCOCOplus``, ``lmms-lab/RefCOCOg``), made
for lmms-eval: images embedded, one row per object with all its expressions, no train split.
From the dataset cards and lmms-eval's ``lmms_eval/tasks/refcoco/utils*.py``:

- files ``data/<split>-<k>-of-<n>.parquet``; splits ``val``, ``test``, ``testA``,
  ``testB`` (RefCOCO), ``val``, ``testA``, ``testB`` (RefCOCO+), ``val``, ``test``
  (RefCOCOg).
- columns: ``question_id`` string, ``image`` (Hugging Face Image: struct<bytes: binary,
  path: string>), ``question`` string (a fixed captioning prompt, unused), ``answer``
  list<string> (the object's expressions, as typed: capitals and commas kept), ``segmentation``
  list<float32> (one flat polygon x1, y1, x2, y2, ...: lmms-eval draws it with
  ``ImageDraw.polygon``), ``bbox`` list<float32> ([x, y, w, h]: lmms-eval converts it with
  x + w, y + h), ``iscrowd`` int8, ``file_name`` string.
- Caveats: the cards list 8811 RefCOCO val rows and 7573 RefCOCOg val rows, 5000 more than
  the refs of those splits (3811, 2573), and a RefCOCO ``test`` split of 5000 rows that the
  unc splitBy does not have; their origin is not documented. ``segmentation`` holds one
  polygon: for objects made of several polygons in COCO, whether it is the first part or
  the parts concatenated is not documented.

Images are read from the parquet file on access, one row group at a time (the last row group
read is kept, so items in file order read each row group once).

Book: ``book/05_grounding.ipynb`` (evaluation data); the train split feeds the head search of
``book/04_selection.ipynb``.
"""

from __future__ import annotations

import ast
import bisect
import functools
import io
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..images import load_image
from ..items import GroundingDataset, GroundingItem
from .refer import (
    COCO_FILE_NAME,
    DEFAULT_SPLIT_BY,
    REFER_DATA_URL,
    ExprField,
    _mask_loader,
    canonical_dataset,
    check_expr_field,
    check_image_files,
    check_split,
    decode_segmentation,
    image_loader,
    resolve_image_dir,
    warn_empty,
    xywh_to_xyxy,
)

#: Hugging Face repositories of the jxu124 copies.
JXU124_REPOS: dict[str, str] = {
    "refcoco": "jxu124/refcoco",
    "refcoco+": "jxu124/refcocoplus",
    "refcocog": "jxu124/refcocog",
}
#: refer split -> file split of the jxu124 copies (RefCOCO/+ "testA" is stored as "test").
JXU124_FILE_SPLITS: dict[str, dict[str, str]] = {
    "refcoco": {"train": "train", "val": "validation", "testA": "test", "testB": "testB"},
    "refcoco+": {"train": "train", "val": "validation", "testA": "test", "testB": "testB"},
    "refcocog": {"train": "train", "val": "validation", "test": "test"},
}
#: Columns a jxu124 file must have for this loader.
JXU124_COLUMNS: tuple[str, ...] = (
    "ref_id", "ann_id", "image_id", "split", "sentences", "category_id",
    "raw_anns", "raw_image_info", "image_path", "bbox",
)

#: Hugging Face repositories of the lmms-lab copies.
LMMS_REPOS: dict[str, str] = {
    "refcoco": "lmms-lab/RefCOCO",
    "refcoco+": "lmms-lab/RefCOCOplus",
    "refcocog": "lmms-lab/RefCOCOg",
}
#: Splits of the lmms-lab copies (no train split).
LMMS_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "test", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
#: Columns an lmms-lab file must have for this loader.
LMMS_COLUMNS: tuple[str, ...] = ("question_id", "image", "answer", "segmentation", "bbox",
                                 "file_name")

_COCO_ID = re.compile(r"COCO_\w+?_(\d{12})")


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the [data] extra
        raise DatasetError(
            "reading parquet files needs pyarrow, which is not installed",
            "pip install 'minilocal[data]' (or pip install pyarrow).",
        ) from exc
    return pq


def _download_fix(repo: str) -> str:
    return (
        f"download it with `huggingface-cli download {repo} --repo-type dataset "
        f"--local-dir <folder>` and pass root=<folder> (it then holds data/*.parquet)."
    )


def parquet_files(root: str | os.PathLike, file_split: str) -> list[Path]:
    """The parquet files of one split in a local copy of a Hugging Face dataset repo.

    Looks for ``<root>/data/<split>-*.parquet`` (the repos' own layout), then
    ``<root>/<split>-*.parquet``, ``<root>/default/<split>/*.parquet`` (the Hub's
    ``refs/convert/parquet`` branch) and ``<root>/<split>/*.parquet``.

    Returns:
        The files, sorted by name (empty if none).

    Book: ``book/05_grounding.ipynb``.
    """
    root = Path(root)
    patterns = [
        (root / "data", f"{file_split}-*.parquet"),
        (root, f"{file_split}-*.parquet"),
        (root / "default" / file_split, "*.parquet"),
        (root / file_split, "*.parquet"),
    ]
    for folder, pattern in patterns:
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if files:
            return files
    return []


def all_parquet_files(root: str | os.PathLike) -> list[Path]:
    """Every parquet file of a local dataset copy (``data/``, top level, ``default/*/``).

    Book: ``book/05_grounding.ipynb``.
    """
    root = Path(root)
    found: list[Path] = []
    for folder in (root / "data", root):
        if folder.is_dir():
            found += sorted(folder.glob("*.parquet"))
    if (root / "default").is_dir():
        found += sorted((root / "default").glob("*/*.parquet"))
    return found


def _split_names(files: list[Path]) -> list[str]:
    names = {f.parent.name if f.parent.parent.name == "default" else f.name.split("-")[0]
             for f in files}
    return sorted(names)


def _require_root(root: str | os.PathLike, repo: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {str(root)!r}", _download_fix(repo))
    return root


def _read_columns(files: list[Path], columns: tuple[str, ...], repo: str) -> list[dict]:
    """Rows of ``files`` as dicts, with only ``columns``; missing columns raise."""
    pq = _pyarrow_parquet()
    rows: list[dict] = []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DatasetError(
                f"cannot read {str(f)!r} as parquet ({exc})", _download_fix(repo)
            ) from exc
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(
                f"{str(f)!r} is not a {repo} file: columns {missing} missing (has {names})",
                f"pass the folder of {repo} ({_download_fix(repo)}), or choose the "
                "source= that matches these files.",
            )
        rows += pq.read_table(f, columns=list(columns)).to_pylist()
    return rows


def _parse_record(text: Any, what: str, repo: str) -> dict:
    """A JSON (or Python-literal) dict stored as a string column; never eval."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str):
        raise DatasetError(f"{what} is {type(text).__name__}, not a string", _download_fix(repo))
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise DatasetError(
                f"cannot parse {what} ({exc}): {text[:80]!r}", _download_fix(repo)
            ) from exc
    if not isinstance(value, dict):
        raise DatasetError(f"{what} is not a dict: {text[:80]!r}", _download_fix(repo))
    return value


# --------------------------------------------------------------------------- jxu124


def load_jxu124(
    dataset: str,
    split: str,
    *,
    root: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    split_by: str | None = None,
    expr_field: ExprField = "raw",
    check_images: bool = False,
) -> GroundingDataset:
    """One split from a local copy of ``jxu124/refcoco``, ``refcocoplus`` or ``refcocog``.

    One item per sentence; ids, boxes and masks as :func:`minilocal.data.load_refer` gives
    them (the same ids for the same sentences). Boxes come from ``raw_anns``'s
    ``[x, y, w, h]``; masks from its segmentation, decoded on access.

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        split: "train", "val", "testA", "testB" (RefCOCO/+) or "train", "val", "test"
            (RefCOCOg); the refer names, not the file names.
        root: The local copy of the repo (holding ``data/*.parquet``).
        image_dir: The COCO train2014 folder; by default looked for under ``root``.
        split_by: Only the copies' own splitBy (unc; umd for RefCOCOg) is available.
        expr_field: "raw" (default) or "sent".
        check_images: Check every image file exists now (otherwise only the first one).

    Returns:
        The items, named ``"<dataset>/<splitBy>/<split>"``.

    Raises:
        DatasetError: Unknown dataset/split, another splitBy, missing folder, files or
            columns, missing images.

    Book: ``book/05_grounding.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    repo = JXU124_REPOS[dataset]
    own = DEFAULT_SPLIT_BY[dataset]
    if split_by not in (None, own):
        raise DatasetError(
            f"{repo} holds only the {own} splits, not splitBy {split_by!r}",
            f"use split_by={own!r}, or the refer toolkit files for other splitBy "
            f"({REFER_DATA_URL.format(name=dataset)}).",
        )
    check_split(dataset, own, split)
    check_expr_field(expr_field)
    root = _require_root(root, repo)
    file_split = JXU124_FILE_SPLITS[dataset][split]
    files = parquet_files(root, file_split)
    if not files:
        present = _split_names(all_parquet_files(root))
        raise DatasetError(
            f"no parquet files for split {split!r} (file split {file_split!r}) under "
            f"{str(root)!r} (splits found: {present or 'none'})",
            _download_fix(repo),
        )
    images_root = resolve_image_dir(image_dir, root)
    rows = _read_columns(files, JXU124_COLUMNS, repo)
    name = f"{dataset}/{own}/{split}"
    items: list[GroundingItem] = []
    loaders: dict[Any, Any] = {}  # image_id -> its lazy loader, shared by its items
    n_empty = 0
    for row in rows:
        if row["split"] != split:
            continue
        ann = _parse_record(row["raw_anns"], f"raw_anns of ref {row['ref_id']}", repo)
        info = _parse_record(row["raw_image_info"], f"raw_image_info of ref {row['ref_id']}",
                             repo)
        if ann.get("bbox") is not None:
            box = xywh_to_xyxy(ann["bbox"])
        else:  # the bbox column is xyxy already
            box = np.asarray(row["bbox"], dtype=np.float64)
        image_id = row["image_id"]
        file_name = (
            Path(row["image_path"]).name if row.get("image_path")
            else info.get("file_name", COCO_FILE_NAME.format(image_id))
        )
        path = images_root / file_name
        if image_id not in loaders:
            loaders[image_id] = image_loader(path, images_root)
        if "height" in info and "width" in info:
            load_mask = functools.partial(
                _mask_loader, ann.get("segmentation"), info["height"], info["width"]
            )
        else:
            load_mask = functools.partial(_mask_from_file, ann.get("segmentation"), path,
                                          images_root)
        for sent in row["sentences"] or []:
            expr = str(sent.get(expr_field) or "").strip()
            if not expr:
                n_empty += 1
                continue
            items.append(
                GroundingItem(
                    item_id=f"{name}/ref{row['ref_id']}/sent{sent['sent_id']}",
                    expr=expr,
                    box=box.copy(),
                    image_id=str(image_id),
                    dataset=dataset,
                    split=split,
                    load_image=loaders[image_id],
                    load_mask=load_mask,
                    meta={
                        "source": "jxu124",
                        "split_by": own,
                        "ref_id": row["ref_id"],
                        "sent_id": sent["sent_id"],
                        "ann_id": row["ann_id"],
                        "category_id": row["category_id"],
                        "iscrowd": ann.get("iscrowd", 0),
                        "file_name": file_name,
                    },
                )
            )
    if not items:
        found = sorted({str(r["split"]) for r in rows})
        raise DatasetError(
            f"the {file_split!r} files under {str(root)!r} hold no sentences of split "
            f"{split!r} (their split column says {found})",
            f"these files are not {repo}'s {split} split: {_download_fix(repo)}",
        )
    warn_empty(n_empty, name)
    paths = [loader.args[0] for loader in loaders.values()]  # in order of first use
    check_image_files(paths, images_root, every=check_images)
    return GroundingDataset(items, name)


def _mask_from_file(segmentation: Any, path: Path, image_dir: Path) -> np.ndarray | None:
    w, h = image_loader(path, image_dir)().size
    return decode_segmentation(segmentation, h, w)


# --------------------------------------------------------------------------- lmms-lab


class ParquetImages:
    """Reads embedded images (a Hugging Face Image column) from parquet files on demand.

    Only the last row group read is kept in memory, so reading items in file order reads
    each row group once.

    Args:
        files: The parquet files, in the order their rows were numbered.
        column: The image column (struct<bytes, path>, or plain binary).

    Book: ``book/05_grounding.ipynb``.
    """

    def __init__(self, files: list[Path], column: str = "image"):
        pq = _pyarrow_parquet()
        self.files = list(files)
        self.column = column
        # Row offset of each row group, per file: starts[f][g] = first row of group g.
        self.starts: list[list[int]] = []
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.starts.append([0, *np.cumsum(sizes)[:-1].tolist()])
        self._key: tuple[int, int] | None = None
        self._group = None
        self._lock = threading.Lock()

    def image_bytes(self, file_index: int, row: int) -> bytes:
        """The encoded image of ``row`` (0-based, within file ``file_index``)."""
        pq = _pyarrow_parquet()
        starts = self.starts[file_index]
        group = bisect.bisect_right(starts, row) - 1
        with self._lock:
            if self._key != (file_index, group):
                table = pq.ParquetFile(self.files[file_index]).read_row_group(
                    group, columns=[self.column]
                )
                self._group = table.column(self.column)
                self._key = (file_index, group)
            cell = self._group[row - starts[group]].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise DatasetError(
                f"row {row} of {self.files[file_index].name} has no embedded image bytes",
                "download the dataset again (its parquet files embed every image).",
            )
        return data

    def image(self, file_index: int, row: int) -> Image.Image:
        """The decoded RGB image of one row (through :func:`minilocal.images.load_image`)."""
        return load_image(Image.open(io.BytesIO(self.image_bytes(file_index, row))))


def _lmms_mask(store: ParquetImages, file_index: int, row: int, polygon: Any):
    w, h = store.image(file_index, row).size
    return decode_segmentation(polygon, h, w)


def load_lmms_lab(
    dataset: str,
    split: str,
    *,
    root: str | os.PathLike,
    split_by: str | None = None,
) -> GroundingDataset:
    """One split from a local copy of ``lmms-lab/RefCOCO``, ``RefCOCOplus`` or ``RefCOCOg``.

    Each row is one object with its expressions (``answer``); each expression becomes an
    item with id ``"<dataset>/lmms-lab/<split>/q<question_id>/sent<k>"`` (k = position in
    ``answer``), or ``.../row<i>/sent<k>`` (i = row number in the sorted files) if the
    split's question ids are not unique. Expressions are the raw text (there is no
    lower-cased "sent" form). Box: ``bbox`` [x, y, w, h] -> xyxy; mask: the one polygon in
    ``segmentation``; image: the embedded bytes, all read on access.

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        split: "val", "test", "testA", "testB" (RefCOCO), "val", "testA", "testB"
            (RefCOCO+), "val", "test" (RefCOCOg). There is no train split.
        root: The local copy of the repo (holding ``data/*.parquet``).
        split_by: Only for checking: the copies follow unc (RefCOCO/+), umd (RefCOCOg).

    Returns:
        The items, named ``"<dataset>/lmms-lab/<split>"``.

    Raises:
        DatasetError: Unknown dataset/split, "train" (not in these copies), missing folder,
            files or columns.

    Book: ``book/05_grounding.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    repo = LMMS_REPOS[dataset]
    own = DEFAULT_SPLIT_BY[dataset]
    if split_by not in (None, own):
        raise DatasetError(
            f"{repo} follows splitBy {own}, not {split_by!r}",
            f"use the refer toolkit files for splitBy {split_by!r} "
            f"({REFER_DATA_URL.format(name=dataset)}).",
        )
    valid = LMMS_SPLITS[dataset]
    if split == "train":
        raise DatasetError(
            f"{repo} has no train split (only {', '.join(valid)})",
            f"the train split (used for the head search) is in the refer toolkit files "
            f"(source='refer', {REFER_DATA_URL.format(name=dataset)}) and in "
            f"{JXU124_REPOS[dataset]} (source='jxu124'); both need the COCO train2014 images.",
        )
    if split not in valid:
        raise DatasetError(
            f"unknown split {split!r} for {repo}", f"use one of {', '.join(valid)}."
        )
    root = _require_root(root, repo)
    files = parquet_files(root, split)
    if not files:
        present = _split_names(all_parquet_files(root))
        raise DatasetError(
            f"no parquet files for split {split!r} under {str(root)!r} "
            f"(splits found: {present or 'none'})",
            _download_fix(repo),
        )
    pq = _pyarrow_parquet()
    columns = [c for c in LMMS_COLUMNS if c != "image"]
    per_file: list[list[dict]] = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in LMMS_COLUMNS if c not in names]
        if missing:
            raise DatasetError(
                f"{str(f)!r} is not a {repo} file: columns {missing} missing (has {names})",
                f"pass the folder of {repo} ({_download_fix(repo)}), or choose the "
                "source= that matches these files.",
            )
        extra = ["iscrowd"] if "iscrowd" in names else []
        per_file.append(pq.read_table(f, columns=columns + extra).to_pylist())
    store = ParquetImages(files)
    qids = [str(r["question_id"]) for rows in per_file for r in rows]
    use_qid = len(set(qids)) == len(qids)
    name = f"{dataset}/lmms-lab/{split}"
    items: list[GroundingItem] = []
    n_empty = 0
    global_row = 0
    for file_index, rows in enumerate(per_file):
        for row_index, row in enumerate(rows):
            qid = str(row["question_id"]).replace("/", "_")
            key = f"q{qid}" if use_qid else f"row{global_row}"
            global_row += 1
            box = xywh_to_xyxy(row["bbox"])
            match = _COCO_ID.search(row["file_name"] or "")
            image_id = str(int(match.group(1))) if match else str(row["file_name"])
            load_img = functools.partial(store.image, file_index, row_index)
            load_mask = functools.partial(_lmms_mask, store, file_index, row_index,
                                          row["segmentation"])
            for k, answer in enumerate(row["answer"] or []):
                expr = str(answer or "").strip()
                if not expr:
                    n_empty += 1
                    continue
                items.append(
                    GroundingItem(
                        item_id=f"{name}/{key}/sent{k}",
                        expr=expr,
                        box=box.copy(),
                        image_id=image_id,
                        dataset=dataset,
                        split=split,
                        load_image=load_img,
                        load_mask=load_mask,
                        meta={
                            "source": "lmms-lab",
                            "split_by": own,
                            "question_id": row["question_id"],
                            "answer_index": k,
                            "iscrowd": row.get("iscrowd", 0),
                            "file_name": row["file_name"],
                        },
                    )
                )
    if not items:
        raise DatasetError(
            f"the {split!r} files under {str(root)!r} hold no expressions",
            f"download the dataset again: {_download_fix(repo)}",
        )
    warn_empty(n_empty, name)
    return GroundingDataset(items, name)
