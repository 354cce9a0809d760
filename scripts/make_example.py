"""Write examples/shapes.png, the picture of the README's first command.

Three objects of the embedded model's world (drawn by ``minilocal.toy.world``, at 288 px):
a big red circle, a small blue circle and a small red triangle, so that "the red circle"
needs both the colour and the kind. Run from the repository root::

    python scripts/make_example.py
"""

from dataclasses import replace
from pathlib import Path

from PIL import Image

from minilocal.toy import world as W


def main() -> None:
    cfg = replace(W.WorldConfig(), image_size=288)
    objects = [
        W.ShapeObject("red", "circle", "big", (15.0, 150.0, 140.0, 275.0)),
        W.ShapeObject("blue", "circle", "small", (180.0, 20.0, 270.0, 110.0)),
        W.ShapeObject("red", "triangle", "small", (170.0, 170.0, 265.0, 265.0)),
    ]
    assert W.referents("the red circle", objects) == [0]
    image, _ = W._render(objects, cfg)
    out = Path("examples/shapes.png")
    out.parent.mkdir(exist_ok=True)
    Image.fromarray(image).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
