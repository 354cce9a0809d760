"""Where the image-token grid lies on the original image.

A vision-language model never sees the user's W x H image itself: its processor pads,
resizes and/or crops it onto a canvas, and the vision encoder cuts the canvas into an
h x w grid of image tokens. To turn an attention map (on the grid) into a box (in image
pixels) that transform must be undone. For every processor in this field the transform is
an axis-aligned affine map, so one small class covers them all::

    x_image = offset_x + gx * scale_x          (gx in grid units, 0 .. w)
    y_image = offset_y + gy * scale_y          (gy in grid units, 0 .. h)

* ``pad_to_square`` (original LLaVA-1.5): the image is pasted in the middle of a square of
  side S = max(W, H), so one cell is S / w pixels and the grid starts at minus the pad.
* ``center_crop`` (CLIP processors, the llava-hf default): resize the shortest edge, cut
  the centre; the borders of the image are never seen.
* ``resize`` (Qwen2-VL, SmolVLM...): stretch to the canvas; cells are not square.

Stretching the grid onto W x H when the processor padded is the bug behind a reported
failed reproduction of the paper (METHOD.md section 5); these constructors exist so that
nobody has to write that arithmetic inline.

Book: ``book/05_grounding.ipynb`` and ``book/06_your_model.ipynb`` (exercise 6.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from .errors import InputError

GeometryKind = Literal["pad_to_square", "center_crop", "resize", "affine"]


@dataclass(frozen=True)
class Geometry:
    """Affine map from grid units to the original image's pixels.

    Attributes:
        image_size: (W, H) of the original image in pixels.
        grid: (h, w): rows and columns of image tokens.
        scale: (scale_x, scale_y): image pixels per grid cell.
        offset: (offset_x, offset_y): image position of the grid's top-left corner
            (negative when the processor padded).
        kind: Which processor transform this came from (for display).
    """

    image_size: tuple[int, int]
    grid: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]
    kind: GeometryKind = "affine"

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_steps(
        cls,
        image_size: tuple[int, int],
        grid: tuple[int, int],
        *,
        pad_to_square: bool = False,
        shortest_edge: int | None = None,
        resize_hw: tuple[int, int] | None = None,
        crop_hw: tuple[int, int] | None = None,
    ) -> Geometry:
        """Compose the processor's steps, in the order processors apply them.

        Args:
            image_size: (W, H) of the original image.
            grid: (h, w) of the image tokens covering the final canvas.
            pad_to_square: Paste the image in the middle of a max(W, H) square first, at
                ((S - W) // 2, (S - H) // 2), as LLaVA's ``expand2square`` does.
            shortest_edge: Resize so the short side has this length; the long side becomes
                ``int(shortest_edge * long / short)`` (transformers' rule).
            resize_hw: Or resize to exactly (height, width) (stretch).
            crop_hw: Then cut the centre (height, width) at ((R - c) // 2).

        Returns:
            The geometry of the composed transform.
        """
        W, H = image_size
        h, w = grid
        if pad_to_square:
            S = max(W, H)
            pw, ph, px, py = S, S, (S - W) // 2, (S - H) // 2
        else:
            pw, ph, px, py = W, H, 0, 0
        if shortest_edge is not None:
            short, long = min(pw, ph), max(pw, ph)
            new_long = int(shortest_edge * long / short)
            RW, RH = (shortest_edge, new_long) if pw <= ph else (new_long, shortest_edge)
        elif resize_hw is not None:
            RH, RW = resize_hw
        else:
            RW, RH = pw, ph
        rx, ry = RW / pw, RH / ph
        if crop_hw is not None:
            ch, cw = crop_hw
            left, top = (RW - cw) // 2, (RH - ch) // 2
        else:
            ch, cw, left, top = RH, RW, 0, 0
        if pad_to_square:
            kind = "pad_to_square"
        elif crop_hw is not None and (cw < RW or ch < RH):
            kind = "center_crop"
        else:
            kind = "resize"
        return cls(
            image_size=(W, H),
            grid=(h, w),
            scale=(cw / w / rx, ch / h / ry),
            offset=(left / rx - px, top / ry - py),
            kind=kind,
        )

    @classmethod
    def pad_to_square(cls, image_size: tuple[int, int], grid: tuple[int, int]) -> Geometry:
        """Grid over the image padded to a square (LLaVA-1.5 ``expand2square``)."""
        return cls.from_steps(image_size, grid, pad_to_square=True)

    @classmethod
    def resize(cls, image_size: tuple[int, int], grid: tuple[int, int]) -> Geometry:
        """Grid stretched over the whole image (plain resize, no pad, no crop)."""
        return cls.from_steps(image_size, grid)

    @classmethod
    def center_crop(
        cls,
        image_size: tuple[int, int],
        grid: tuple[int, int],
        shortest_edge: int,
        crop_size: tuple[int, int],
    ) -> Geometry:
        """Grid over the centre crop (crop_h, crop_w) taken after resizing the shortest edge."""
        return cls.from_steps(image_size, grid, shortest_edge=shortest_edge, crop_hw=crop_size)

    # ----------------------------------------------------------------- boxes
    def grid_box_to_image(self, box_grid, clip: bool = True) -> np.ndarray:
        """Box in grid units (x0, y0, x1, y1; a cell spans [j, j+1]) to image pixels.

        Args:
            box_grid: xyxy in grid units, shape [4] or [N, 4].
            clip: Clip to the image (padding is not part of the image).

        Returns:
            xyxy in image pixels, float64, same leading shape.
        """
        b = np.asarray(box_grid, dtype=np.float64)
        sx, sy = self.scale
        ox, oy = self.offset
        out = np.empty_like(b)
        out[..., 0::2] = ox + b[..., 0::2] * sx
        out[..., 1::2] = oy + b[..., 1::2] * sy
        if clip:
            W, H = self.image_size
            out[..., 0::2] = out[..., 0::2].clip(0, W)
            out[..., 1::2] = out[..., 1::2].clip(0, H)
        return out

    def image_box_to_grid(self, box) -> np.ndarray:
        """Box in image pixels (xyxy) to grid units: the inverse of :meth:`grid_box_to_image`."""
        b = np.asarray(box, dtype=np.float64)
        sx, sy = self.scale
        ox, oy = self.offset
        out = np.empty_like(b)
        out[..., 0::2] = (b[..., 0::2] - ox) / sx
        out[..., 1::2] = (b[..., 1::2] - oy) / sy
        return out

    # ----------------------------------------------------------------- masks and maps
    def _pixel_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid row of every image row and grid column of every image column (-1: off grid)."""
        W, H = self.image_size
        h, w = self.grid
        sx, sy = self.scale
        ox, oy = self.offset
        cols = np.floor((np.arange(W) + 0.5 - ox) / sx).astype(np.int64)
        rows = np.floor((np.arange(H) + 0.5 - oy) / sy).astype(np.int64)
        cols[(cols < 0) | (cols >= w)] = -1
        rows[(rows < 0) | (rows >= h)] = -1
        return rows, cols

    def mask_to_image(self, mask_grid: np.ndarray) -> np.ndarray:
        """Upsample a grid mask [h, w] to an image mask [H, W] (nearest cell per pixel).

        Pixels the grid does not cover (cropped borders) are False.
        """
        mask_grid = np.asarray(mask_grid, dtype=bool)
        if mask_grid.shape != tuple(self.grid):
            raise InputError(
                f"mask shape {mask_grid.shape} != grid {tuple(self.grid)}",
                "pass a grid mask of this geometry's grid (h, w).",
            )
        rows, cols = self._pixel_cells()
        out = mask_grid[rows.clip(0)[:, None], cols.clip(0)[None, :]]
        out &= (rows >= 0)[:, None] & (cols >= 0)[None, :]
        return out  # [H, W]

    def map_to_image(self, values: np.ndarray, order: int = 1) -> np.ndarray:
        """Resample a grid map [h, w] onto image pixels [H, W] (bilinear by default).

        Cell values sit at cell centres; outside the grid the nearest edge value is used.
        """
        values = np.asarray(values, dtype=np.float64)
        W, H = self.image_size
        sx, sy = self.scale
        ox, oy = self.offset
        gx = (np.arange(W) + 0.5 - ox) / sx - 0.5  # [W] fractional column of each pixel
        gy = (np.arange(H) + 0.5 - oy) / sy - 0.5  # [H]
        yy, xx = np.meshgrid(gy, gx, indexing="ij")  # [H, W]
        return ndimage.map_coordinates(values, [yy, xx], order=order, mode="nearest")

    def image_mask_to_grid(self, mask: np.ndarray) -> np.ndarray:
        """Fraction of each grid cell covered by an image mask [H, W] -> [h, w] in [0, 1].

        The fraction is over the cell's pixels that lie inside the image; cells wholly in
        the padding get 0.
        """
        mask = np.asarray(mask, dtype=bool)
        W, H = self.image_size
        if mask.shape != (H, W):
            raise InputError(
                f"mask shape {mask.shape} != image (H, W) {(H, W)}",
                "pass a mask of the same image this geometry was made for.",
            )
        h, w = self.grid
        rows, cols = self._pixel_cells()
        cell = rows[:, None] * w + cols[None, :]  # [H, W]
        valid = (rows >= 0)[:, None] & (cols >= 0)[None, :]
        hit = np.bincount(cell[valid & mask], minlength=h * w)
        tot = np.bincount(cell[valid], minlength=h * w)
        return (hit / np.maximum(tot, 1)).reshape(h, w)
