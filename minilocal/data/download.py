"""A small RefCOCO sample and SAM's weights, fetched on request (Colab notebooks).

The loaders of :mod:`minilocal.data` read local files and download nothing. This module
is the one place where minilocal itself downloads, and only when one of its functions is
called: the notebooks of ``notebooks/colab/`` use it on a GPU machine, where the 13 GB
COCO archive is out of the question.

- :func:`refcoco_sample`: ``n`` expressions of one RefCOCO / RefCOCO+ / RefCOCOg split
  with their images. It fetches the split's annotations from the ``jxu124`` parquet copy
  on the Hugging Face Hub (no pixels; :func:`download_refcoco_annotations`), then only
  the COCO train2014 images of the chosen items, one file each from
  ``images.cocodataset.org`` (:func:`fetch_coco_images`).
- :func:`download_sam_checkpoint`: one of Meta's official SAM checkpoints.

Everything resumes: a file already on disk is kept and never fetched again, and each file
is written as ``<name>.part`` and renamed when complete, so an interrupted download leaves
no truncated file behind. The network calls are arguments (``fetch``, ``hub_download``),
which the tests replace with offline fakes.

Book: ``book/06_your_model.ipynb`` (RefCOCO, running the chapters on a GPU).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import DatasetError, MinilocalError, SamError
from ..items import GroundingDataset
from .parquet import JXU124_FILE_SPLITS, JXU124_REPOS, _pyarrow_parquet, load_jxu124, parquet_files
from .refer import DEFAULT_SPLIT_BY, canonical_dataset, check_split

#: Where :func:`refcoco_sample` keeps its files by default (relative to the working folder).
DEFAULT_ROOT = Path("data") / "jxu124-refcoco"
#: One COCO train2014 image (format with ``name=``, e.g. ``COCO_train2014_000000581719.jpg``).
COCO_IMAGE_URL = "http://images.cocodataset.org/train2014/{name}"

#: ``fetch(url, path)``: download ``url`` into the file ``path`` (raise on failure).
Fetch = Callable[[str, Path], Any]
#: ``huggingface_hub.snapshot_download``, or a stand-in taking the same keyword arguments
#: (``repo_id``, ``repo_type``, ``allow_patterns``, ``local_dir``).
HubDownload = Callable[..., Any]

_RETRY = "run it again when the network is back: files already downloaded are kept."


def _urlretrieve(url: str, path: Path) -> None:
    urllib.request.urlretrieve(url, path)


def fetch_files(
    wanted: dict[Path, str],
    *,
    fetch: Fetch | None = None,
    workers: int = 16,
    error: type[MinilocalError] = DatasetError,
) -> list[Path]:
    """Download every file of ``wanted`` that is not on disk yet, ``workers`` at a time.

    Each file is written as ``<path>.part``, then renamed to ``path``: a file that exists
    is complete. Failed downloads are all attempted before one error reports them.

    Args:
        wanted: Destination path -> URL.
        fetch: ``fetch(url, path)``; default: ``urllib.request.urlretrieve``.
        workers: Parallel downloads.
        error: The :class:`~minilocal.errors.MinilocalError` subclass raised on failure.

    Returns:
        The paths downloaded by this call (files already present are skipped).

    Raises:
        error: Some downloads failed (the message names the first few and why).

    Book: ``book/06_your_model.ipynb``.
    """
    fetch = fetch or _urlretrieve
    todo = sorted(p for p in {Path(p) for p in wanted} if not p.is_file())

    def get(path: Path) -> BaseException | None:
        part = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fetch(wanted[path], part)
            if not part.is_file():
                raise OSError("the download wrote no file")
            part.replace(path)
            return None
        except Exception as exc:  # reported together below
            part.unlink(missing_ok=True)
            return exc

    if not todo:
        return []
    with ThreadPoolExecutor(max(1, min(int(workers), len(todo)))) as pool:
        results = list(pool.map(get, todo))
    failed = [(p, e) for p, e in zip(todo, results) if e is not None]
    if failed:
        shown = "; ".join(f"{wanted[p]} ({type(e).__name__}: {e})" for p, e in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise error(f"{len(failed)} of {len(todo)} downloads failed: {shown}{more}",
                    f"check the network connection (and the URL), then {_RETRY}")
    return todo


def fetch_coco_images(
    names: Iterable[str],
    image_dir: str | os.PathLike,
    *,
    fetch: Fetch | None = None,
    workers: int = 16,
) -> list[Path]:
    """Download the named COCO train2014 images into ``image_dir`` (those not there yet).

    Args:
        names: File names such as ``COCO_train2014_000000581719.jpg`` (an item's
            ``meta["file_name"]``).
        image_dir: The folder that receives them (created if needed).
        fetch, workers: As in :func:`fetch_files`.

    Returns:
        The paths downloaded by this call.

    Book: ``book/06_your_model.ipynb``.
    """
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    wanted = {image_dir / Path(n).name: COCO_IMAGE_URL.format(name=Path(n).name) for n in names}
    return fetch_files(wanted, fetch=fetch, workers=workers)


def download_refcoco_annotations(
    dataset: str = "refcoco",
    split: str = "val",
    root: str | os.PathLike = DEFAULT_ROOT,
    *,
    hub_download: HubDownload | None = None,
) -> Path:
    """The parquet annotations of one split, from the ``jxu124`` copy on the Hugging Face Hub.

    Fetches ``data/<file split>-*.parquet`` of ``jxu124/refcoco`` (``refcocoplus``,
    ``refcocog``) into ``root``, unless ``root`` already holds that split's files, in
    which case nothing is fetched (no network access either).

    Args:
        dataset: "refcoco", "refcoco+" or "refcocog".
        split: A refer split name ("train", "val", "testA", ...).
        root: The local copy of the dataset repository.
        hub_download: ``huggingface_hub.snapshot_download`` (default) or a stand-in.

    Returns:
        ``root``, ready for :func:`minilocal.data.load_jxu124`.

    Raises:
        DatasetError: Unknown dataset or split; the download failed or gave no file.

    Book: ``book/06_your_model.ipynb``.
    """
    dataset = canonical_dataset(dataset)
    check_split(dataset, DEFAULT_SPLIT_BY[dataset], split)
    repo, file_split = JXU124_REPOS[dataset], JXU124_FILE_SPLITS[dataset][split]
    root = Path(root)
    if parquet_files(root, file_split):
        return root
    manual = (f"huggingface-cli download {repo} --repo-type dataset --include "
              f"'data/{file_split}-*' --local-dir {root}")
    if hub_download is None:
        try:
            from huggingface_hub import snapshot_download as hub_download
        except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
            raise DatasetError("downloading from the Hugging Face Hub needs huggingface_hub",
                               "pip install huggingface_hub (transformers installs it).") from exc
    try:
        hub_download(repo_id=repo, repo_type="dataset", allow_patterns=[f"data/{file_split}-*"],
                     local_dir=str(root))
    except Exception as exc:
        raise DatasetError(
            f"downloading {repo} ({split} split) failed: {type(exc).__name__}: {exc}",
            f"check the network connection, then {_RETRY} Or download by hand: {manual}",
        ) from exc
    if not parquet_files(root, file_split):
        raise DatasetError(f"the download of {repo} gave no {file_split!r} parquet file in "
                           f"{str(root)!r}", f"download by hand: {manual}")
    return root


def _first_image_name(root: Path, file_split: str, split: str) -> str | None:
    """The image file of the split's first row (the loader checks that it exists)."""
    pq = _pyarrow_parquet()
    for f in parquet_files(root, file_split):
        for row in pq.read_table(f, columns=["split", "image_path"]).to_pylist():
            if row["split"] == split and row["image_path"]:
                return Path(row["image_path"]).name
    return None


def refcoco_sample(
    split: str = "val",
    n: int | None = None,
    *,
    seed: int | None = None,
    dataset: str = "refcoco",
    root: str | os.PathLike = DEFAULT_ROOT,
    image_dir: str | os.PathLike | None = None,
    workers: int = 16,
    fetch: Fetch | None = None,
    hub_download: HubDownload | None = None,
) -> GroundingDataset:
    """``n`` expressions of one RefCOCO split with their images, downloaded on demand.

    The annotations come from the ``jxu124`` parquet copy
    (:func:`download_refcoco_annotations`), the images one by one from COCO
    (:func:`fetch_coco_images`): only the images of the items returned, a few hundred
    files for a few hundred items instead of the 13 GB archive. Run again, it finds
    everything on disk and fetches nothing.

    Args:
        split: "train", "val", "testA", "testB" (RefCOCO, RefCOCO+) or "train", "val",
            "test" (RefCOCOg).
        n: How many items (None: the whole split, which downloads every image it uses).
        seed: None: the split's first ``n`` items, in order (an evaluation sample). An
            int: ``split.sample(n, seed)``, a seeded random draw (a pool to search heads
            in).
        dataset: "refcoco", "refcoco+" or "refcocog" (splitBy unc; umd for RefCOCOg).
        root: Folder for the annotations (``data/*.parquet``).
        image_dir: Folder for the images; default ``<root>/train2014``.
        workers: Parallel image downloads.
        fetch: ``fetch(url, path)`` for the images (default: urllib).
        hub_download: Stand-in for ``huggingface_hub.snapshot_download``.

    Returns:
        The items, named like the split (``"refcoco/unc/val"``), with the same item ids
        as :func:`minilocal.data.load_refcoco` gives them.

    Raises:
        DatasetError: Unknown dataset or split, ``n`` < 1, a failed download (run again:
            what was downloaded is kept).

    Book: ``book/06_your_model.ipynb``.
    """
    if n is not None and int(n) < 1:
        raise DatasetError(f"refcoco_sample needs n >= 1 items, got {n}",
                           "pass n >= 1, or n=None for the whole split.")
    if seed is not None and n is None:
        raise DatasetError("a seeded draw needs its size n", "pass n=... with seed=...")
    dataset = canonical_dataset(dataset)
    root = download_refcoco_annotations(dataset, split, root, hub_download=hub_download)
    image_dir = Path(image_dir) if image_dir is not None else root / "train2014"
    first = _first_image_name(root, JXU124_FILE_SPLITS[dataset][split], split)
    fetch_coco_images([first] if first else [], image_dir, fetch=fetch, workers=workers)
    items = load_jxu124(dataset, split, root=root, image_dir=image_dir)
    chosen = items if n is None else items[:n] if seed is None else items.sample(n, seed)
    fetch_coco_images((it.meta["file_name"] for it in chosen), image_dir, fetch=fetch,
                      workers=workers)
    return chosen


def download_sam_checkpoint(
    checkpoint: str | os.PathLike = "sam_vit_b_01ec64.pth",
    *,
    fetch: Fetch | None = None,
) -> Path:
    """One of Meta's official SAM checkpoints, downloaded unless the file exists.

    Args:
        checkpoint: Path of the file; its name must be an official one
            (:data:`minilocal.segmentation.OFFICIAL_CHECKPOINTS`, e.g.
            ``"sam_vit_b_01ec64.pth"``, 375 MB). Its folder is created if needed.
        fetch: ``fetch(url, path)`` (default: urllib).

    Returns:
        The checkpoint's path, for :func:`minilocal.segmentation.load_sam`.

    Raises:
        SamError: Not an official file name, or the download failed.

    Book: ``book/06_your_model.ipynb``.
    """
    from ..segmentation import CHECKPOINT_URL, OFFICIAL_CHECKPOINTS

    path = Path(checkpoint)
    if path.is_file():
        return path
    names = [name for name, _ in OFFICIAL_CHECKPOINTS.values()]
    if path.name not in names:
        raise SamError(f"{str(path)!r} does not exist and is not an official SAM checkpoint",
                       f"pass a path whose file name is one of {names} (downloaded from "
                       f"{CHECKPOINT_URL}), or an existing checkpoint file.")
    fetch_files({path: CHECKPOINT_URL + path.name}, fetch=fetch, workers=1, error=SamError)
    return path
