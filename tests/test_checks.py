"""The exercise checkers, both ways: the reference passes, plausible wrong versions fail.

Also: the stored expected values equal what the package computes today (no drift), and a
checker reports, returns and (when strict) raises as documented.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from minilocal import checks, criteria

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_checks_data  # noqa: E402

REFERENCES = make_checks_data.REFERENCES


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


# ----------------------------------------------------------------------------------------
# Plausible wrong versions, one list per checker (each must fail at least one case)
# ----------------------------------------------------------------------------------------


def _rows(attentions):
    return np.stack([np.asarray(a)[0] for a in attentions])  # [L, H, T, T]


WRONG = {
    "last_token_attention": {
        "first query row": lambda att, pos, grid: _rows(att)[:, :, 0, np.asarray(pos)].reshape(
            len(att), -1, *grid),
        "column-major reshape": lambda att, pos, grid: _rows(att)[:, :, -1, np.asarray(pos)]
        .reshape(len(att), -1, grid[1], grid[0]).transpose(0, 1, 3, 2),
        "contiguous range from the first image token": lambda att, pos, grid: _rows(att)[
            :, :, -1, int(pos[0]): int(pos[0]) + grid[0] * grid[1]].reshape(len(att), -1, *grid),
        "keeps the batch axis": lambda att, pos, grid: np.stack([np.asarray(a)[:, :, -1] for a in att])[
            ..., np.asarray(pos)].reshape(len(att), 1, -1, *grid),
    },
    "s_img": {
        "sum over all keys": lambda row, pos: np.asarray(row).sum(-1),
        "mean over image keys": lambda row, pos: np.asarray(row)[..., np.asarray(pos)].mean(-1),
        "max over image keys": lambda row, pos: np.asarray(row)[..., np.asarray(pos)].max(-1),
    },
    "find_elbow": {
        "no sorting": lambda v: int(np.argmax(np.abs(
            np.linspace(0, 1, len(v)) - (np.asarray(v) - np.min(v)) / max(np.ptp(v), 1e-300)))),
        "no normalisation": lambda v: int(np.argmax(np.abs(np.arange(len(v)) - np.sort(v)))),
        "largest second difference": lambda v: int(np.argmax(np.diff(np.sort(v), 2)) + 1)
        if len(v) >= 3 else 0,
        "returns the value, not the index": lambda v: float(np.sort(v)[criteria.find_elbow(v)]),
    },
    "spatial_entropy": {
        "4-connectivity": lambda m: float(criteria.spatial_entropy(m, connectivity=4)),
        "mass weights (public code)": lambda m: float(criteria.spatial_entropy(m, "public_code")),
        "log base 2": lambda m: float(criteria.spatial_entropy(m)) / math.log(2),
        "threshold >= mean": lambda m: _entropy_ge(m),
        "0 for no foreground": lambda m: float(np.nan_to_num(criteria.spatial_entropy(m),
                                                             posinf=0.0)),
    },
    "selection_frequency": {
        "fraction, not percent": lambda e, p, top=10: REFERENCES["selection_frequency"](
            e, p, top) / 100,
        "ignores criterion 1": lambda e, p, top=10: REFERENCES["selection_frequency"](
            e, np.ones_like(p), top),
        "counts infinite entropy": lambda e, p, top=10: REFERENCES["selection_frequency"](
            np.nan_to_num(e, posinf=1e9), p, top),
        "divides by N * top": lambda e, p, top=10: REFERENCES["selection_frequency"](
            e, p, top) / top,
    },
    "pseudo_mask": {
        ">= mean": lambda c, threshold="mean": _pm(c, threshold, np.greater_equal),
        "fraction of max ignored": lambda c, threshold="mean": np.asarray(c) > np.mean(c),
        "mean of the non-zero cells": lambda c, threshold="mean": np.asarray(c) > np.asarray(
            c)[np.asarray(c) != 0].mean(),
    },
    "convex_hull": {
        "hull of cell centres": lambda m: _hull(np.argwhere(m)[:, ::-1] + 0.5),
        "bounding box corners": lambda m: None if not m.any() else _box_poly(m),
        "all corners, unordered": lambda m: None if not m.any() else np.unique(np.concatenate(
            [np.argwhere(m)[:, ::-1] + d for d in ([0, 0], [0, 1], [1, 0], [1, 1])]), axis=0),
    },
    "grid_box": {
        "cell centres": lambda m: None if not m.any() else np.array(
            [*np.argwhere(m)[:, ::-1].min(0), *np.argwhere(m)[:, ::-1].max(0)], float),
        "x and y swapped": lambda m: None if not m.any() else np.array(
            [*np.argwhere(m).min(0), *(np.argwhere(m).max(0) + 1)], float),
        "empty mask gives the full grid": lambda m: np.array(
            [*np.argwhere(m)[:, ::-1].min(0), *(np.argwhere(m)[:, ::-1].max(0) + 1)], float)
        if m.any() else np.array([0, 0, m.shape[1], m.shape[0]], float),
    },
    "grid_box_to_image": {
        "stretch over W x H (public code's bug)": lambda b, grid, size: _g2i(
            b, grid, size, scale=(size[0] / grid[1], size[1] / grid[0]), offset=(0, 0)),
        "no pad offset": lambda b, grid, size: _g2i(
            b, grid, size, offset=(0, 0)),
        "no clipping": lambda b, grid, size: _g2i(b, grid, size, clip=False),
        "pad offset (S - W) / 2, not rounded down": lambda b, grid, size: _g2i(
            b, grid, size, offset=((max(size) - size[0]) / 2, (max(size) - size[1]) / 2)),
        "grid read as (w, h)": lambda b, grid, size: _g2i(
            b, grid, size, scale=(max(size) / grid[0], max(size) / grid[1])),
        "pad offset added": lambda b, grid, size: _g2i(
            b, grid, size, offset=(-((max(size) - size[0]) // 2), -((max(size) - size[1]) // 2))),
    },
    "box_iou": {
        "no clipping of the intersection": lambda a, b: _iou_noclip(a, b),
        "None crashes": lambda a, b: REFERENCES["box_iou"](np.asarray(a), b),
        "+1 pixel convention": lambda a, b: _iou_plus1(a, b),
    },
    "acc_at": {
        "> instead of >=": lambda ious, threshold=0.5: float(np.mean(np.asarray(ious) > threshold))
        if len(ious) else float("nan"),
        "percent": lambda ious, threshold=0.5: 100 * REFERENCES["acc_at"](ious, threshold),
        "0 for no items": lambda ious, threshold=0.5: float(np.mean(np.asarray(ious) >= threshold))
        if len(ious) else 0.0,
        "ignores threshold": lambda ious, threshold=0.5: REFERENCES["acc_at"](ious, 0.5),
    },
}


def _g2i(box_grid, grid, image_size, scale=None, offset=None, clip=True):
    """Grid box -> pixels as x = gx * scale_x - offset_x (the reference's arithmetic by
    default: scale S / w, S / h, offset the pad (S - W) // 2, (S - H) // 2, clipped)."""
    (h, w), (W, H) = grid, image_size
    S = max(W, H)
    sx, sy = scale if scale is not None else (S / w, S / h)
    ox, oy = offset if offset is not None else ((S - W) // 2, (S - H) // 2)
    b = np.asarray(box_grid, dtype=float)
    out = np.array([b[0] * sx - ox, b[1] * sy - oy, b[2] * sx - ox, b[3] * sy - oy])
    if clip:
        out = np.clip(out, 0, [W, H, W, H])
    return out


def _entropy_ge(m):
    m = np.asarray(m, dtype=float)
    fg = m >= m.mean()
    lab, n = ndimage.label(fg, structure=np.ones((3, 3)))
    if n == 0:
        return math.inf
    sizes = np.bincount(lab.ravel())[1:]
    p = sizes / sizes.sum()
    return float(-(p * np.log(p)).sum())


def _pm(c, threshold, op):
    c = np.asarray(c, dtype=float)
    cut = c.mean() if threshold == "mean" else threshold * c.max()
    return op(c, cut)


def _hull(points):
    if len(points) == 0:
        return None
    if len(points) < 3:
        return np.asarray(points, float)
    try:
        hull = ConvexHull(points)
    except Exception:
        return np.asarray(points, float)
    return points[hull.vertices]


def _box_poly(m):
    rc = np.argwhere(m)
    (y0, x0), (y1, x1) = rc.min(0), rc.max(0) + 1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _iou_noclip(a, b):
    if a is None:
        return 0.0
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _iou_plus1(a, b):
    if a is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# ----------------------------------------------------------------------------------------
# Both ways
# ----------------------------------------------------------------------------------------


def test_every_checker_has_a_reference_and_wrong_versions():
    assert set(checks.CHECKERS) == set(REFERENCES) == set(WRONG)
    assert all(len(w) >= 2 for w in WRONG.values())


@pytest.mark.parametrize("name", sorted(checks.CHECKERS))
def test_reference_passes(name, capsys):
    result = checks.CHECKERS[name](REFERENCES[name])
    out = capsys.readouterr().out
    assert result.ok, result.report()
    assert result.total >= 5
    assert out.strip().splitlines()[-1] == f"{name}: {result.total}/{result.total} cases passed"
    assert sum(c.name.startswith("realistic") for c in checks.cases(name)) == 1


@pytest.mark.parametrize(
    "name,wrong", [(n, w) for n in sorted(WRONG) for w in sorted(WRONG[n])],
    ids=lambda x: x.replace(" ", "-") if isinstance(x, str) else None,
)
def test_wrong_version_fails(name, wrong, capsys):
    result = checks.CHECKERS[name](WRONG[name][wrong])
    out = capsys.readouterr().out
    assert not result.ok, f"{name}: the wrong version {wrong!r} passed every case"
    assert result.passed + len(result.failures) == result.total
    assert "FAIL" in out and "expected:" in out and "got:" in out
    assert out.strip().splitlines()[-1] == result.summary()


# ----------------------------------------------------------------------------------------
# Behaviour of a checker
# ----------------------------------------------------------------------------------------


def test_a_stub_that_raises_is_reported_not_raised(capsys):
    def stub(map2d):
        raise NotImplementedError("write spatial_entropy")

    result = checks.check_spatial_entropy(stub)
    assert result.passed == 0 and len(result.failures) == result.total
    assert "raised NotImplementedError: write spatial_entropy" in capsys.readouterr().out


def test_strict_raises_after_the_report(monkeypatch, capsys):
    with pytest.raises(checks.CheckFailed, match="0/"):
        checks.check_box_iou(lambda a, b: -1.0, strict=True)
    monkeypatch.setenv(checks.STRICT_ENV, "1")
    with pytest.raises(checks.CheckFailed):
        checks.check_acc_at(lambda ious, threshold=0.5: 0.0)
    checks.check_acc_at(REFERENCES["acc_at"])  # passes: no raise even when strict


def test_inputs_are_copies():
    seen = []

    def mutating(map2d):
        seen.append(map2d)
        map2d[...] = 0
        return REFERENCES["spatial_entropy"](map2d)

    checks.check_spatial_entropy(mutating, verbose=False)
    again = checks.check_spatial_entropy(REFERENCES["spatial_entropy"], verbose=False)
    assert again.ok


def test_result_object():
    r = checks.check_grid_box(REFERENCES["grid_box"], verbose=False)
    assert (r.name, r.passed, r.total, r.failures) == ("grid_box", r.total, r.total, [])
    assert repr(r) == f"CheckResult('grid_box: {r.total}/{r.total} cases passed')"
    with pytest.raises(TypeError, match="takes your function"):
        checks.check_grid_box(np.zeros(3))


def test_torch_outputs_are_accepted():
    import torch

    def torch_version(att, pos, grid):
        rows = torch.stack([a[0, :, -1, :] for a in att])  # [L, H, T]
        return rows[:, :, pos].reshape(rows.shape[0], rows.shape[1], *grid)

    assert checks.check_last_token_attention(torch_version, verbose=False).ok


# ----------------------------------------------------------------------------------------
# Stored data: no drift from the package
# ----------------------------------------------------------------------------------------


def test_stored_expected_values_match_the_package():
    stored = json.loads(
        (ROOT / "minilocal" / "checks_data" / checks.EXPECTED_FILE).read_text(encoding="utf-8")
    )
    fresh = make_checks_data.compute_expected()
    assert set(stored) == set(fresh)
    for name in fresh:
        assert set(stored[name]) == {c.name for c in checks.cases(name)}, name
        for case, value in fresh[name].items():
            assert stored[name][case] == value, f"{name} / {case} drifted: rerun scripts/make_checks_data.py"


def test_realistic_inputs_regenerate():
    """The stored realistic inputs are what the script makes today (tiny LLaVA included),
    and the tiny LLaVA's stored answer is the package's capture path."""
    arrays, fixed = make_checks_data.realistic_inputs()
    stored = checks._realistic_all()
    assert set(arrays) == set(stored)
    for key, value in arrays.items():
        np.testing.assert_allclose(
            stored[key], value, rtol=0, atol=1e-6,
            err_msg=f"{key} drifted (tiny model or package changed?): rerun "
                    "scripts/make_checks_data.py and commit minilocal/checks_data/")
    exp = checks.decode_expected(
        checks._expected_all()["last_token_attention"]["realistic: a tiny random LLaVA, eager attention"]
    )
    np.testing.assert_allclose(exp, fixed["last_token_attention"], rtol=0, atol=1e-6)
    # and the capture path agrees with slicing the eager attention (what students do)
    r = checks.realistic_inputs("last_token_attention")
    sliced = REFERENCES["last_token_attention"](list(r["attentions"]), r["positions"],
                                                tuple(r["grid"]))
    assert np.abs(sliced - exp).max() < 1e-5


def test_strict_env_variable_name_is_documented():
    assert checks.STRICT_ENV in checks.__doc__
    assert os.environ.get(checks.STRICT_ENV) is None
