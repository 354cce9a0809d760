"""RefCOCO, RefCOCO+ and RefCOCOg from the refer toolkit's own files.

The refer toolkit (https://github.com/lichengunc/refer) ships, per dataset, a folder::

    <root>/refcoco/instances.json      COCO-style images, annotations (boxes, masks), categories
    <root>/refcoco/refs(unc).p         the referring expressions, a Python-2 pickle
    <root>/refcoco+/...refs(unc).p     RefCOCO+: splitBy unc only
    <root>/refcocog/...refs(umd).p     RefCOCOg: splitBy umd (also refs(google).p)

and the images are COCO train2014 (``COCO_train2014_%012d.jpg``), a separate download.

What the files hold (the toolkit's own README and ``refer.py``):

- ``refs(<splitBy>).p``: a list of refs, each a dict ``{ref_id, ann_id, image_id, split,
  category_id, file_name, sent_ids, sentences}``; each sentence is a dict
  ``{sent_id, raw, sent, tokens}`` (``raw`` as typed by the annotator, ``sent`` lower-cased
  and tokenised). ``file_name`` carries an annotation suffix
  (``COCO_train2014_000000581857_16.jpg``) and is not the image's file: the image file is
  ``instances.json``'s ``images[i]["file_name"]``.
- ``instances.json``: ``{"images": [{id, file_name, height, width, ...}], "annotations":
  [{id, image_id, bbox: [x, y, w, h], segmentation, iscrowd, category_id, ...}],
  "categories": [{id, name, ...}]}``. ``segmentation`` is a list of polygons
  ``[[x1, y1, x2, y2, ...], ...]`` or, for crowd regions, an RLE dict.

The pickle is read by :func:`read_refs_pickle`, which refuses every pickled object other than
plain containers and scalars: a pickle can name any Python callable, and loading a tampered
refs file with :func:`pickle.load` would run it.

This module also holds what every RefCOCO source shares: the dataset names, the splits of
each ``splitBy``, COCO mask decoding and the lazy image loader.

Book: ``book/05_grounding.ipynb`` (evaluation data); the train split feeds the head search of
``book/04_selection.ipynb``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..images import load_image
from ..items import GroundingDataset, GroundingItem

#: The three datasets, by their minilocal names.
DATASETS: tuple[str, ...] = ("refcoco", "refcoco+", "refcocog")
#: Other spellings accepted for the dataset name (the Hugging Face repos spell "+" as "plus").
DATASET_ALIASES: dict[str, str] = {
    "refcocoplus": "refcoco+",
    "refcoco_plus": "refcoco+",
    "refcoco-plus": "refcoco+",
}
#: The splits of each (dataset, splitBy), as the refer toolkit names them.
SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco", "google"): ("train", "val", "test"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
#: The splitBy used when none is given: the one the paper's tables report.
DEFAULT_SPLIT_BY: dict[str, str] = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
#: COCO train2014 file names, the images of all three datasets.
COCO_FILE_NAME = "COCO_train2014_{:012d}.jpg"

#: Which text of a sentence becomes ``item.expr``: ``"raw"`` as typed by the annotator
#: (what the lmms-lab parquet files hold), or ``"sent"``, the toolkit's lower-cased,
#: punctuation-free form.
ExprField = Literal["raw", "sent"]
EXPR_FIELDS: tuple[str, ...] = ("raw", "sent")

REFER_URL = "https://github.com/lichengunc/refer"
REFER_DATA_URL = "https://bvisionweb1.cs.unc.edu/licheng/referit/data/{name}.zip"
COCO_TRAIN2014_URL = "http://images.cocodataset.org/zips/train2014.zip"
COCO_FIX = (
    f"the RefCOCO family uses the COCO train2014 images: download {COCO_TRAIN2014_URL} "
    "(13 GB), unzip it, and pass image_dir=<the train2014 folder>."
)


# --------------------------------------------------------------------------- names, splits


def canonical_dataset(name: str) -> str:
    """The minilocal name of a dataset ("refcoco", "refcoco+" or "refcocog").

    Args:
        name: A dataset name; case is ignored and "refcocoplus" means "refcoco+".

    Raises:
        DatasetError: Not one of the three datasets.

    Book: ``book/05_grounding.ipynb``.
    """
    key = str(name).strip().lower()
    key = DATASET_ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}",
            f"use one of {', '.join(DATASETS)} (RefCOCO+ may also be written 'refcocoplus').",
        )
    return key


def resolve_split_by(dataset: str, split_by: str | None) -> str:
    """The splitBy to use: ``split_by`` checked against the dataset, or its default.

    Raises:
        DatasetError: That dataset has no such splitBy.

    Book: ``book/05_grounding.ipynb``.
    """
    if split_by is None:
        return DEFAULT_SPLIT_BY[dataset]
    valid = [sb for (ds, sb) in SPLITS if ds == dataset]
    if split_by not in valid:
        raise DatasetError(
            f"{dataset} has no splitBy {split_by!r}",
            f"use split_by in {valid} (or leave it out for {DEFAULT_SPLIT_BY[dataset]!r}).",
        )
    return split_by


def check_split(dataset: str, split_by: str, split: str) -> None:
    """Raise unless ``split`` is a split of (dataset, split_by).

    Raises:
        DatasetError: Unknown split, naming the valid ones.

    Book: ``book/05_grounding.ipynb``.
    """
    valid = SPLITS[(dataset, split_by)]
    if split not in valid:
        hint = " ('validation' is written 'val')" if split == "validation" else ""
        raise DatasetError(
            f"unknown split {split!r} for {dataset} (splitBy {split_by}){hint}",
            f"use one of {', '.join(valid)}.",
        )


def check_expr_field(expr_field: str) -> None:
    """Raise DatasetError unless ``expr_field`` is "raw" or "sent".

    Book: ``book/05_grounding.ipynb``.
    """
    if expr_field not in EXPR_FIELDS:
        raise DatasetError(
            f"unknown expr_field {expr_field!r}",
            "use expr_field='raw' (the text as typed) or 'sent' (lower-cased, tokenised).",
        )


def xywh_to_xyxy(bbox: Sequence[float]) -> np.ndarray:
    """[x, y, w, h] (COCO) -> [4] float64 [x0, y0, x1, y1] in pixels.

    Book: ``book/05_grounding.ipynb``.
    """
    x, y, w, h = (float(v) for v in bbox)
    return np.array([x, y, x + w, y + h], dtype=np.float64)


# --------------------------------------------------------------------------- safe pickle


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that builds containers and scalars and refuses every named object."""

    def find_class(self, module: str, name: str):
        # Plain containers and scalars have opcodes of their own and never reach here.
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"forbidden persistent id {pid!r}")


def _forbidden_fix(path: Path) -> str:
    name = path.parent.name or "refcoco"
    return (
        "minilocal reads refs pickles that hold only lists, dicts, strings and numbers, "
        "because unpickling anything else can run code. Use the original file from the "
        f"refer toolkit ({REFER_DATA_URL.format(name=name)}, see {REFER_URL}); if you made "
        "this file yourself, save plain lists/dicts instead (or use the parquet sources)."
    )


def read_refs_pickle(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a refer-toolkit ``refs(<splitBy>).p`` without running any pickled code.

    The files were written by Python 2 (protocol 2). Python-2 byte strings are decoded as
    UTF-8, or as Latin-1 when a file is not valid UTF-8. Only what has a pickle opcode of its
    own is built: dict, list, tuple, str, int, float, bool, None. A pickle that names any
    Python object (a class, a function such as ``os.system``, even a set or a numpy number)
    is refused before anything is called. The real refs files need nothing more: public
    Python-3 ports of the toolkit read them with a plain ``pickle.load(f)``, whose ASCII
    decoding would fail on non-ASCII byte strings and on most pickled numpy numbers.

    Args:
        path: The refs file.

    Returns:
        The list of ref dicts, as stored.

    Raises:
        DatasetError: Missing or unreadable file, a forbidden object, or not a list of dicts.

    Book: ``book/05_grounding.ipynb``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"refs file not found: {str(path)!r}",
            f"download the dataset folder from the refer toolkit ({REFER_URL}).",
        )
    data = path.read_bytes()
    refs: Any = None
    for encoding in ("utf-8", "latin-1"):
        try:
            refs = _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue  # a Python-2 byte string that is not UTF-8: try Latin-1
        except pickle.UnpicklingError as exc:
            if "forbidden" in str(exc):
                raise DatasetError(f"{str(path)!r} holds a {exc}", _forbidden_fix(path)) from exc
            raise DatasetError(
                f"cannot read {str(path)!r} as a pickle ({exc})",
                f"download the file again from the refer toolkit ({REFER_URL}).",
            ) from exc
        except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise DatasetError(
                f"cannot read {str(path)!r} as a pickle ({type(exc).__name__}: {exc})",
                f"download the file again from the refer toolkit ({REFER_URL}).",
            ) from exc
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(
            f"{str(path)!r} does not hold a list of ref dicts (got {type(refs).__name__})",
            f"use the refs(<splitBy>).p file of the refer toolkit ({REFER_URL}).",
        )
    return refs


# --------------------------------------------------------------------------- masks


def _pycocotools_mask():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # pragma: no cover - pycocotools is in the [data] extra
        raise DatasetError(
            "decoding COCO masks needs pycocotools, which is not installed",
            "pip install 'minilocal[data]' (or pip install pycocotools).",
        ) from exc
    return mask_utils


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO segmentation as an [H, W] bool mask.

    Args:
        segmentation: Polygons ``[[x1, y1, x2, y2, ...], ...]`` (one or more parts of one
            object), a single flat polygon ``[x1, y1, ...]`` (lmms-lab parquet), or an RLE
            dict ``{"size": [H, W], "counts": ...}`` with ``counts`` either a list of run
            lengths (uncompressed, as COCO stores crowd regions) or a compressed string.
        height: Image height H in pixels.
        width: Image width W in pixels.

    Returns:
        [H, W] bool mask, or None when the segmentation is empty (no polygon with at least
        three points).

    Raises:
        DatasetError: A segmentation of no known form, or an RLE of another size.

    Book: ``book/05_grounding.ipynb``.
    """
    mask_utils = _pycocotools_mask()
    h, w = int(height), int(width)
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", (h, w))]
        if size != [h, w]:
            raise DatasetError(
                f"RLE mask of size {size} for an image of {h}x{w} (H x W)",
                "the annotation and the image do not belong together: check instances.json.",
            )
        counts = segmentation.get("counts")
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts}
        else:
            raise DatasetError(
                f"RLE mask with counts of type {type(counts).__name__}",
                "expected a list of run lengths or a compressed RLE string (COCO format).",
            )
        return _decode(mask_utils, rle)
    if isinstance(segmentation, np.ndarray):
        segmentation = segmentation.tolist()
    if isinstance(segmentation, (list, tuple)):
        if len(segmentation) and not isinstance(segmentation[0], (list, tuple, np.ndarray)):
            segmentation = [segmentation]  # one flat polygon
        # COCO's frPyObjects reads a 4-number polygon as a box: keep polygons of >= 3 points.
        polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None
        return _decode(mask_utils, mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)))
    raise DatasetError(
        f"segmentation of type {type(segmentation).__name__}",
        "expected COCO polygons (a list of [x1, y1, ...] lists) or an RLE dict.",
    )


def _decode(mask_utils, rle: dict) -> np.ndarray:
    with warnings.catch_warnings():
        # pycocotools 2.0.x warns about numpy 2's copy keyword on every decode; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _mask_loader(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    # Looks decode_segmentation up at call time (so masks decode lazily, one at a time).
    return decode_segmentation(segmentation, height, width)


# --------------------------------------------------------------------------- images


def _image_from_file(path: Path, image_dir: Path) -> Image.Image:
    """Open one COCO image; a missing file raises DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(
            f"image file {path.name!r} not found in {str(image_dir)!r}",
            COCO_FIX,
        )
    return load_image(path)


def image_loader(path: Path, image_dir: Path):
    """A zero-argument callable that opens ``path`` when called (lazy image loading).

    The image goes through :func:`minilocal.images.load_image` (8-bit RGB, upright); a
    missing file raises :class:`DatasetError` naming it and the COCO download.

    Book: ``book/05_grounding.ipynb``.
    """
    return functools.partial(_image_from_file, path, image_dir)


def resolve_image_dir(image_dir: str | os.PathLike | None, root: Path) -> Path:
    """The COCO train2014 folder: ``image_dir``, or one of the usual places under ``root``.

    Without ``image_dir``, tries ``<root>/images/mscoco/images/train2014`` (the refer
    toolkit's layout), ``<root>/images/mscoco/train2014``, ``<root>/train2014`` and
    ``<root>/coco/train2014``.

    Raises:
        DatasetError: The folder does not exist.

    Book: ``book/05_grounding.ipynb``.
    """
    if image_dir is not None:
        path = Path(image_dir)
        if not path.is_dir():
            raise DatasetError(f"image folder not found: {str(path)!r}", COCO_FIX)
        return path
    tried = [
        root / "images" / "mscoco" / "images" / "train2014",
        root / "images" / "mscoco" / "train2014",
        root / "train2014",
        root / "coco" / "train2014",
    ]
    for path in tried:
        if path.is_dir():
            return path
    raise DatasetError(
        "no COCO train2014 image folder given, and none found at "
        + ", ".join(repr(str(p)) for p in tried),
        COCO_FIX,
    )


def check_image_files(paths: Sequence[Path], image_dir: Path, every: bool) -> None:
    """Raise DatasetError if the first (``every=False``) or any of ``paths`` is missing.

    Book: ``book/05_grounding.ipynb``.
    """
    to_check = list(dict.fromkeys(paths)) if every else list(paths[:1])
    missing = [p for p in to_check if not p.is_file()]
    if missing:
        names = ", ".join(p.name for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"{len(missing)} image file(s) not found in {str(image_dir)!r}: {names}{more}",
            COCO_FIX,
        )


def warn_empty(n_empty: int, name: str) -> None:
    """Warn that ``n_empty`` empty expressions were left out of dataset ``name``.

    Book: ``book/05_grounding.ipynb``.
    """
    if n_empty:
        warnings.warn(
            f"minilocal: {n_empty} empty expression(s) left out of {name}",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- the loader


def refer_dataset_dir(root: str | os.PathLike, dataset: str) -> Path:
    """The folder holding ``refs(*).p`` and ``instances.json``: ``<root>/<dataset>``.

    ``root`` may also be that folder itself when its name is the dataset's.

    Raises:
        DatasetError: ``root`` or the dataset folder does not exist.

    Book: ``book/05_grounding.ipynb``.
    """
    root = Path(root)
    fix = (
        f"download {REFER_DATA_URL.format(name=dataset)} (see {REFER_URL}), unzip it into "
        f"a folder, and pass root=<that folder> (it then holds {dataset}/refs(...).p and "
        f"{dataset}/instances.json)."
    )
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {str(root)!r}", fix)
    if (root / dataset).is_dir():
        return root / dataset
    if root.name == dataset:
        return root
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise DatasetError(
        f"no {dataset!r} folder in {str(root)!r} (found: {found or 'nothing'})", fix
    )


def load_refer(
    dataset: str,
    split: str,
    *,
    root: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    split_by: str | None = None,
    expr_field: ExprField = "raw",
    check_images: bool = False,
) -> GroundingDataset:
    """One split of RefCOCO / RefCOCO+ / RefCOCOg from the refer toolkit's files.

    One item per sentence (referring expression), in the order of the refs file. Item ids
    are ``"<dataset>/<splitBy>/<split>/ref<ref_id>/sent<sent_id>"`` (the jxu124 parquet
    loader gives the same ids to the same sentences). Boxes come from the annotation's
    ``[x, y, w, h]``, as xyxy pixels; masks decode from its polygons or RLE on access.

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        split: A split of that dataset and splitBy (e.g. "train", "val", "testA").
        root: The folder holding ``<dataset>/refs(<splitBy>).p`` and
            ``<dataset>/instances.json`` (or the ``<dataset>`` folder itself).
        image_dir: The COCO train2014 folder; by default looked for under ``root``.
        split_by: "unc", "google" or "umd"; default unc (RefCOCO, RefCOCO+), umd (RefCOCOg).
        expr_field: "raw" (default) or "sent": which text of a sentence is ``item.expr``.
        check_images: Check every image file exists now (otherwise only the first one;
            a missing file then raises when its item's image is read).

    Returns:
        The items, named ``"<dataset>/<splitBy>/<split>"``.

    Raises:
        DatasetError: Unknown dataset/split/splitBy, a missing folder or file, a refs file
            with forbidden objects, an annotation id missing from instances.json.

    Book: ``book/05_grounding.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    split_by = resolve_split_by(dataset, split_by)
    check_split(dataset, split_by, split)
    check_expr_field(expr_field)
    data_dir = refer_dataset_dir(root, dataset)
    refs_path = data_dir / f"refs({split_by}).p"
    if not refs_path.is_file():
        present = sorted(p.name for p in data_dir.glob("refs(*).p"))
        raise DatasetError(
            f"no refs({split_by}).p in {str(data_dir)!r} (found: {present or 'no refs files'})",
            f"download {REFER_DATA_URL.format(name=dataset)} (see {REFER_URL}) and unzip it "
            f"there, or pass split_by= one of the splitBy files present.",
        )
    instances_path = data_dir / "instances.json"
    if not instances_path.is_file():
        raise DatasetError(
            f"no instances.json in {str(data_dir)!r}",
            f"it comes in the same zip as the refs file: {REFER_DATA_URL.format(name=dataset)}.",
        )
    images_root = resolve_image_dir(image_dir, Path(root))
    refs = read_refs_pickle(refs_path)
    try:
        instances = json.loads(instances_path.read_text(encoding="utf-8"))
        anns = {a["id"]: a for a in instances["annotations"]}
        images = {im["id"]: im for im in instances["images"]}
        cats = {c["id"]: c.get("name") for c in instances.get("categories", [])}
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{str(instances_path)!r} is not a COCO instances file ({type(exc).__name__}: {exc})",
            f"download it again with the refs file: {REFER_DATA_URL.format(name=dataset)}.",
        ) from exc

    name = f"{dataset}/{split_by}/{split}"
    items: list[GroundingItem] = []
    loaders: dict[Any, Any] = {}  # image_id -> its lazy loader, shared by its items
    n_empty = 0
    for ref in refs:
        if ref.get("split") != split:
            continue
        try:
            ann = anns[ref["ann_id"]]
            image_id = ref["image_id"]
        except KeyError as exc:
            raise DatasetError(
                f"ref {ref.get('ref_id')} of {refs_path.name} names {exc} that "
                f"{instances_path.name} lacks",
                "use the refs file and instances.json from the same download.",
            ) from exc
        info = images.get(image_id, {})
        path = images_root / info.get("file_name", COCO_FILE_NAME.format(image_id))
        if image_id not in loaders:
            loaders[image_id] = image_loader(path, images_root)
        box = xywh_to_xyxy(ann["bbox"])
        if "height" in info and "width" in info:
            load_mask = functools.partial(
                _mask_loader, ann.get("segmentation"), info["height"], info["width"]
            )
        else:
            load_mask = functools.partial(
                _mask_from_image_size, ann.get("segmentation"), path, images_root
            )
        for sent in ref.get("sentences", []):
            expr = str(sent.get(expr_field, "")).strip()
            if not expr:
                n_empty += 1
                continue
            items.append(
                GroundingItem(
                    item_id=f"{name}/ref{ref['ref_id']}/sent{sent['sent_id']}",
                    expr=expr,
                    box=box.copy(),
                    image_id=str(image_id),
                    dataset=dataset,
                    split=split,
                    load_image=loaders[image_id],
                    load_mask=load_mask,
                    meta={
                        "source": "refer",
                        "split_by": split_by,
                        "ref_id": ref["ref_id"],
                        "sent_id": sent["sent_id"],
                        "ann_id": ref["ann_id"],
                        "category_id": ann.get("category_id"),
                        "category": cats.get(ann.get("category_id")),
                        "iscrowd": ann.get("iscrowd", 0),
                        "file_name": path.name,
                    },
                )
            )
    if not items:
        raise DatasetError(
            f"{refs_path.name} holds no sentences of split {split!r}",
            "the file may be truncated or of another dataset: download it again "
            f"({REFER_DATA_URL.format(name=dataset)}).",
        )
    warn_empty(n_empty, name)
    paths = [loader.args[0] for loader in loaders.values()]  # in order of first use
    check_image_files(paths, images_root, every=check_images)
    return GroundingDataset(items, name)


def _mask_from_image_size(segmentation: Any, path: Path, image_dir: Path) -> np.ndarray | None:
    """Mask decoding when the annotation file gives no image size: take it from the image."""
    w, h = _image_from_file(path, image_dir).size
    return decode_segmentation(segmentation, h, w)
