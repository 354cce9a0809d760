"""minilocal.data.download, offline: a fake hub and a fake COCO server stand in for the network.

The fake hub writes the tiny jxu124 parquet world of tests/refcoco_fixtures.py; the fake
image server writes the fixture's JPEGs. Both count their calls, so that the tests can
check what a second run (resume) fetches: nothing already on disk.
"""

import shutil
from pathlib import Path

import pytest
import refcoco_fixtures as F

from minilocal.data import load_jxu124
from minilocal.data.download import (
    COCO_IMAGE_URL,
    download_refcoco_annotations,
    download_sam_checkpoint,
    fetch_coco_images,
    fetch_files,
    refcoco_sample,
)
from minilocal.errors import DatasetError, SamError
from minilocal.segmentation import CHECKPOINT_URL


class FakeHub:
    """snapshot_download stand-in: writes the fixture's parquet files matching the pattern."""

    def __init__(self, tmp_path):
        self.source = F.write_jxu124(tmp_path / "hub_source")
        self.calls = []

    def __call__(self, *, repo_id, repo_type, allow_patterns, local_dir):
        self.calls.append((repo_id, repo_type, tuple(allow_patterns)))
        for pattern in allow_patterns:
            for f in self.source.glob(pattern):
                dest = Path(local_dir) / f.relative_to(self.source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest)


class FakeCoco:
    """fetch(url, path) stand-in serving the fixture's COCO images; may fail some names."""

    def __init__(self, tmp_path, fail=()):
        self.images = F.write_coco_images(tmp_path / "coco_source")
        self.urls = []
        self.fail = set(fail)

    def __call__(self, url, path):
        self.urls.append(url)
        name = url.rsplit("/", 1)[1]
        if name in self.fail:
            Path(path).write_bytes(b"half a jpeg")  # a partial file, then the error
            raise OSError(f"connection reset while fetching {name}")
        shutil.copy(self.images / name, path)


@pytest.fixture
def hub(tmp_path):
    return FakeHub(tmp_path)


@pytest.fixture
def coco(tmp_path):
    return FakeCoco(tmp_path)


def test_first_items_with_their_images(tmp_path, hub, coco):
    root = tmp_path / "data"
    val = refcoco_sample("val", 2, root=root, fetch=coco, hub_download=hub)
    assert hub.calls == [("jxu124/refcoco", "dataset", ("data/validation-*",))]
    assert val.name == "refcoco/unc/val" and len(val) == 2
    full = load_jxu124("refcoco", "val", root=F.write_jxu124(tmp_path / "ref"),
                       image_dir=F.write_coco_images(tmp_path / "ref_images"))
    assert val.ids == full.ids[:2]  # the same items and ids as the local loader gives
    assert [it.image.size for it in val] == [(64, 48), (64, 48)]  # the images are on disk
    assert coco.urls == [COCO_IMAGE_URL.format(name=F.coco_name(9))]  # fetched once
    assert sorted(p.name for p in (root / "train2014").iterdir()) == [F.coco_name(9)]


def test_a_second_run_fetches_nothing(tmp_path, hub, coco):
    root = tmp_path / "data"
    first = refcoco_sample("train", 5, seed=3, root=root, fetch=coco, hub_download=hub)
    calls, urls = len(hub.calls), len(coco.urls)
    again = refcoco_sample("train", 5, seed=3, root=root, fetch=coco, hub_download=hub)
    assert again.ids == first.ids
    assert (len(hub.calls), len(coco.urls)) == (calls, urls)  # everything was kept


def test_seeded_draw_is_the_split_sample(tmp_path, hub, coco):
    root = tmp_path / "data"
    pool = refcoco_sample("train", 5, seed=7, root=root, fetch=coco, hub_download=hub)
    whole = refcoco_sample("train", root=root, fetch=coco, hub_download=hub)
    assert len(whole) == 12 and pool.ids == whole.sample(5, 7).ids


def test_other_dataset_and_split_names(tmp_path, coco):
    calls = []

    def hub(**kw):
        calls.append(kw)
        raise ConnectionError("offline")

    with pytest.raises(DatasetError) as exc:
        refcoco_sample("test", 3, dataset="refcocog", root=tmp_path, fetch=coco, hub_download=hub)
    assert calls[0]["repo_id"] == "jxu124/refcocog"
    assert calls[0]["allow_patterns"] == ["data/test-*"]
    assert "offline" in exc.value.message and "files already downloaded are kept" in exc.value.fix
    assert "huggingface-cli download jxu124/refcocog" in exc.value.fix
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        refcoco_sample("validation", 3, root=tmp_path, fetch=coco, hub_download=hub)
    with pytest.raises(DatasetError, match="unknown dataset"):
        refcoco_sample("val", 3, dataset="refclef", root=tmp_path, fetch=coco, hub_download=hub)
    assert len(calls) == 1  # bad names fail before any download


def test_bad_sizes(tmp_path, hub, coco):
    with pytest.raises(DatasetError, match="n >= 1"):
        refcoco_sample("val", 0, root=tmp_path, fetch=coco, hub_download=hub)
    with pytest.raises(DatasetError, match="needs its size n"):
        refcoco_sample("val", seed=0, root=tmp_path, fetch=coco, hub_download=hub)
    assert hub.calls == []


def test_hub_that_gives_no_file(tmp_path, coco):
    with pytest.raises(DatasetError, match="gave no 'validation' parquet file") as exc:
        download_refcoco_annotations("refcoco", "val", tmp_path, hub_download=lambda **kw: None)
    assert "--include 'data/validation-*'" in exc.value.fix


def test_annotations_on_disk_are_used_without_the_hub(tmp_path):
    root = F.write_jxu124(tmp_path / "data")

    def hub(**kw):
        raise AssertionError("no download expected")

    assert download_refcoco_annotations("refcoco", "testA", root, hub_download=hub) == root


def test_failed_images_are_reported_and_resumed(tmp_path, hub):
    root = tmp_path / "data"
    bad = FakeCoco(tmp_path, fail={F.coco_name(30)})
    with pytest.raises(DatasetError) as exc:
        refcoco_sample("train", 4, root=root, fetch=bad, hub_download=hub)
    assert "1 of 1 downloads failed" in exc.value.message
    assert "connection reset" in exc.value.message and F.coco_name(30) in exc.value.message
    assert "files already downloaded are kept" in exc.value.fix
    assert not list((root / "train2014").glob("*.part"))  # no partial file left behind
    assert not (root / "train2014" / F.coco_name(30)).exists()
    good = FakeCoco(tmp_path / "again")
    items = refcoco_sample("train", 4, root=root, fetch=good, hub_download=hub)
    assert good.urls == [COCO_IMAGE_URL.format(name=F.coco_name(30))]
    assert items[0].image.size == (48, 40)


def test_fetch_files_reports_every_failure(tmp_path):
    wanted = {tmp_path / f"f{i}.bin": f"http://example.invalid/f{i}" for i in range(5)}
    (tmp_path / "f0.bin").write_bytes(b"kept")

    def fetch(url, path):
        if url[-1] in "134":
            raise TimeoutError("timed out")
        Path(path).write_bytes(url.encode())

    with pytest.raises(DatasetError, match="3 of 4 downloads failed"):
        fetch_files(wanted, fetch=fetch, workers=3)
    assert (tmp_path / "f0.bin").read_bytes() == b"kept"
    assert (tmp_path / "f2.bin").read_bytes() == b"http://example.invalid/f2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.bin", "f2.bin"]
    assert fetch_files({tmp_path / "f2.bin": "x"}, fetch=fetch) == []


def test_fetch_that_writes_nothing_fails(tmp_path):
    with pytest.raises(DatasetError, match="wrote no file"):
        fetch_coco_images(["COCO_train2014_000000000009.jpg"], tmp_path,
                          fetch=lambda url, path: None)


def test_sam_checkpoint(tmp_path):
    urls = []

    def fetch(url, path):
        urls.append(url)
        Path(path).write_bytes(b"weights")

    path = tmp_path / "ckpt" / "sam_vit_b_01ec64.pth"
    assert download_sam_checkpoint(path, fetch=fetch) == path and path.read_bytes() == b"weights"
    assert urls == [CHECKPOINT_URL + "sam_vit_b_01ec64.pth"]
    assert download_sam_checkpoint(path, fetch=fetch) == path and len(urls) == 1  # kept
    with pytest.raises(SamError, match="not an official SAM checkpoint"):
        download_sam_checkpoint(tmp_path / "my_sam.pth", fetch=fetch)

    def broken(url, path):
        raise OSError("404")

    with pytest.raises(SamError, match="1 of 1 downloads failed"):
        download_sam_checkpoint(tmp_path / "sam_vit_h_4b8939.pth", fetch=broken)
