"""Small pieces shared by the family adapters: templates, placed-image geometry, checks.

Book: ``book/06_your_model.ipynb``.
"""

from __future__ import annotations

from ..errors import ImageTokensNotFoundError, InputError
from ..geometry import Geometry, GeometryKind


def resolve_template(model, template: str | None, default: str) -> str:
    """The prompt template: the argument, else the config's ``minilocal_prompt_template``,
    else the family default. Templates hold ``{image}`` and ``{expr}``.

    Raises:
        InputError: The template lacks ``{image}`` or ``{expr}``.
    """
    chosen = template or getattr(model.config, "minilocal_prompt_template", None) or default
    for key in ("{image}", "{expr}"):
        if key not in chosen:
            raise InputError(
                f"prompt template {chosen!r} has no {key} placeholder",
                "write the template with both {image} (where the image goes) and {expr} "
                "(the referring expression), e.g. 'USER: {image}\\n{expr}'.",
            )
    return chosen


def placed_geometry(
    image_size: tuple[int, int],
    grid: tuple[int, int],
    canvas_hw: tuple[float, float],
    placed: tuple[float, float, float, float],
    kind: GeometryKind = "affine",
) -> Geometry:
    """Geometry of a grid that covers a canvas on which the image was placed.

    The processor resized the W x H image to ``pw x ph`` pixels and put its top-left
    corner at ``(x0, y0)`` of a canvas of ``canvas_hw`` = (CH, CW) pixels (padding around
    it, or none); the ``grid`` (h, w) covers the whole canvas, one cell = CW / w pixels
    wide. Then ``x_image = (x_canvas - x0) * W / pw``.

    Args:
        image_size: (W, H) of the original image.
        grid: (h, w).
        canvas_hw: (CH, CW) of the canvas the grid covers, in canvas pixels.
        placed: (x0, y0, pw, ph) of the resized image on the canvas.
        kind: Label for display.
    """
    W, H = image_size
    h, w = grid
    CH, CW = canvas_hw
    x0, y0, pw, ph = placed
    fx, fy = W / pw, H / ph  # image pixels per canvas pixel
    return Geometry(
        image_size=(W, H),
        grid=(h, w),
        scale=(CW / w * fx, CH / h * fy),
        offset=(-x0 * fx, -y0 * fy),
        kind=kind,
    )


def expect_count(positions_count: int, expected: int, what: str) -> None:
    """Raise :class:`ImageTokensNotFoundError` when the prompt holds the wrong token count."""
    if positions_count != expected:
        raise ImageTokensNotFoundError(
            f"{positions_count} image tokens in the prompt, but {what} needs {expected}",
            "use the processor that was saved with the model (AutoProcessor.from_pretrained on "
            "the same folder or hub id); another image size, patch size or tiling setting "
            "produces a different number of image tokens.",
        )
