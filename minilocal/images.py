"""Reading images into the form every model here expects: 8-bit RGB, upright.

The models of this field take 8-bit RGB images. Photos arrive as grayscale, palette, RGBA,
16-bit or EXIF-rotated files; :func:`load_image` turns each into RGB with a stated rule and
says so in a warning (``strict=True`` raises instead), and rejects what no rule can save
(too small, too large, not an image).

Book: ``book/01_attention.ipynb`` (inputs).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

#: Smallest side accepted, in pixels. Below this a grid cell covers less than a pixel.
MIN_SIDE = 8
#: Largest image accepted, in pixels (W * H). About 8k x 8k.
MAX_PIXELS = 64_000_000


class ImageConversionWarning(UserWarning):
    """An image was converted (mode, bit depth or orientation) before use."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit or 32-bit single-channel image to 8 bits by its own range."""
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi > lo:
        arr = (arr - lo) / (hi - lo) * 255.0
    else:
        arr = np.zeros_like(arr)
    return Image.fromarray(arr.round().astype(np.uint8), mode="L")


def _refuse_url(image) -> None:
    """A URL is not a file: say so, rather than "not found" with a slash dropped."""
    if isinstance(image, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", image.strip()):
        raise ImageError(
            f"{image!r} is a URL; minilocal reads local files only",
            "download it first (e.g. `curl -o photo.jpg URL` or `wget URL`) and give the "
            "file's path, or open it yourself and pass a PIL.Image.",
        )


def _first_frame(image: Image.Image) -> Image.Image:
    image.seek(0)
    return image.copy()


def load_image(
    image: str | os.PathLike | Image.Image,
    *,
    strict: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Open an image and return it as upright 8-bit RGB.

    Conversions (each announced with an :class:`ImageConversionWarning`):
    EXIF orientation is applied (boxes are then in the orientation a viewer shows);
    grayscale and palette images are expanded to RGB; RGBA / LA images are composited on
    white; 16-bit and 32-bit images are rescaled to 8 bits by their own min and max.

    Args:
        image: A path or a PIL image.
        strict: Raise :class:`ImageError` instead of converting.
        max_pixels: Largest accepted W * H.

    Returns:
        The RGB image (a new object when anything was converted).

    Raises:
        ImageError: Not an image, smaller than ``MIN_SIDE`` on a side, larger than
            ``max_pixels``, or (with ``strict``) not already upright RGB.

    Book: ``book/01_attention.ipynb``.
    """
    _refuse_url(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise ImageError(
                f"{str(path)!r} is a directory, not an image file",
                "give the path of one image file inside it (a JPEG or PNG), e.g. "
                f"{str(path / 'photo.jpg')!r}.",
            )
        if not path.is_file():
            raise ImageError(
                f"image file not found: {str(path)!r}",
                "check the path; give a JPEG or PNG file, or pass a PIL.Image.",
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                opened = Image.open(path)
                opened.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(
                f"cannot read {str(path)!r} as an image ({exc})",
                "give a JPEG or PNG file (re-save the file with an image editor or PIL).",
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                f"{str(path)!r} is too large to open safely ({exc})",
                f"downscale it below {max_pixels:,} pixels first (PIL: image.thumbnail).",
            ) from exc
        image = opened
    if not isinstance(image, Image.Image):
        raise ImageError(
            f"expected a path or a PIL.Image, got {type(image).__name__}",
            "open the picture with PIL.Image.open(path) or pass its path; "
            "for a numpy array use PIL.Image.fromarray(array).",
        )
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise ImageError(
            f"image is {w}x{h} pixels; at least {MIN_SIDE} pixels per side are needed",
            "pass the real picture, not a thumbnail or an empty placeholder.",
        )
    if w * h > max_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h:,} pixels, above max_pixels={max_pixels:,}",
            "downscale it first (PIL: image.thumbnail((4096, 4096))); the models see "
            "336-1000 px anyway. Or pass max_pixels=... to accept it.",
        )

    def convert(reason: str, fn) -> Image.Image:
        if strict:
            raise ImageError(
                f"image needs conversion: {reason}",
                "convert it yourself (PIL: ImageOps.exif_transpose(image).convert('RGB')), "
                "or call load_image(..., strict=False) to let minilocal convert it.",
            )
        warnings.warn(f"minilocal: {reason}", ImageConversionWarning, stacklevel=3)
        return fn()

    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        src = image
        image = convert(f"image has {frames} frames (animated or multi-page); the first "
                        "frame is used", lambda: _first_frame(src))
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation not in (None, 1):
        image = convert(
            f"EXIF orientation {orientation} applied (image rotated/flipped upright)",
            lambda: ImageOps.exif_transpose(image),
        )
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        src = image
        image = convert(
            f"{mode} ({'16' if mode.startswith('I;16') else '32'}-bit) image rescaled to "
            "8-bit by its own min and max, then expanded to RGB",
            lambda: _to_8bit(src).convert("RGB"),
        )
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        src = image

        def flatten() -> Image.Image:
            rgba = src.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(canvas, rgba).convert("RGB")

        image = convert(f"{mode} image with transparency composited on white", flatten)
    elif mode != "RGB":
        src = image
        image = convert(f"{mode} image converted to RGB", lambda: src.convert("RGB"))
    return image
