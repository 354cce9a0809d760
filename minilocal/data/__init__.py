"""Datasets in one item format: :class:`GroundingItem` (image, expr, xyxy box, mask, ids).

RefCOCO, RefCOCO+ and RefCOCOg load with :func:`load_refcoco` from the refer toolkit's
files or from the jxu124 / lmms-lab parquet copies; :func:`refcoco_sample` downloads a
small sample of a split (annotations and only the images it uses) for the Colab notebooks.
"""

from ..items import GroundingDataset, GroundingItem
from .download import download_refcoco_annotations, fetch_coco_images, refcoco_sample
from .parquet import ParquetImages, load_jxu124, load_lmms_lab
from .refcoco import detect_source, load_refcoco
from .refer import decode_segmentation, load_refer, read_refs_pickle

__all__ = [
    "GroundingDataset",
    "GroundingItem",
    "ParquetImages",
    "decode_segmentation",
    "detect_source",
    "download_refcoco_annotations",
    "fetch_coco_images",
    "load_dataset",
    "load_jxu124",
    "load_lmms_lab",
    "load_refcoco",
    "load_refer",
    "read_refs_pickle",
    "refcoco_sample",
]


#: Default number of items of a shapes split given by :func:`load_dataset`.
SHAPES_SIZE = 1000


def load_dataset(
    name: str,
    split: str,
    *,
    root=None,
    image_dir=None,
    source=None,
    split_by=None,
    size: int | None = None,
) -> GroundingDataset:
    """Any dataset minilocal knows, by name: "refcoco", "refcoco+", "refcocog" or "shapes".

    Args:
        name: Dataset name.
        split: Split name (RefCOCO*: see :func:`load_refcoco`; shapes: "train",
            "selection", "heldout").
        root, image_dir, source, split_by: RefCOCO* files (see :func:`load_refcoco`).
        size: Shapes only: how many items of the split (its items 0 .. size - 1; default
            :data:`SHAPES_SIZE`). The shapes world is procedural, so a split has no end.
    """
    from ..errors import DatasetError

    key = name.lower()
    if key == "shapes":
        from ..toy.world import shapes_dataset

        return shapes_dataset(split, SHAPES_SIZE if size is None else size)
    if key in ("refcoco", "refcoco+", "refcocoplus", "refcocog"):
        if root is None:
            raise DatasetError(
                f"{name} needs the folder with its files",
                "pass root=... (CLI: --root DIR); see minilocal.data.load_refcoco for the "
                "layouts it reads.",
            )
        return load_refcoco(key, split, root=root, source=source, image_dir=image_dir,
                            split_by=split_by)
    raise DatasetError(
        f"unknown dataset {name!r}",
        "use one of: refcoco, refcoco+, refcocog, shapes.",
    )
