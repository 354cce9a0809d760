"""The "shapes" world: procedural images of coloured shapes with referring expressions.

Every image shows 2-5 coloured shapes (circle, square, triangle, diamond; 5 colours; two
sizes) on a grey background, without overlap. One object is the referent; its expression
is the SHORTEST description that picks it and no other object:

* attribute-only: the smallest subset of {size, colour, shape} that is unique, e.g.
  "the circle", "the red shape", "the small blue square";
* relational (a share of the items): an ambiguous head phrase made unique by a relation to
  a uniquely described anchor, e.g. "the triangle left of the blue square".

Scenes are drawn with distractors of the same kind (objects sharing the target's colour or
shape) so that longer expressions are needed. Every item is a pure function of
(split, index): ``rng = numpy.random.default_rng([SPLIT_SEEDS[split], index])``, so any item
can be rebuilt alone, the train stream is unlimited, and the fixed splits "train",
"selection" (head search) and "heldout" (evaluation) never share a random stream.

Items come as :class:`minilocal.data.GroundingItem` (ids like ``"shapes/heldout/000042"``)
with the image, the box (xyxy pixels) and the mask, like the RefCOCO loaders.

The default :class:`WorldConfig` is the world the shipped model was trained on (patterned
fills, two size classes, 96 px images). Options widen it: a share of flat-filled objects
(``flat``), a per-scene scale of the objects (``scale``, small objects too), a range of
image sides (``image_sizes``: the item is drawn at that side and the processor resizes it,
as it does a user's picture) and a subset of the shape kinds (``shapes``). Two presets use
them: :data:`DRAWN`, pictures made the way a user draws them (flat circles and squares,
2-3 objects, 64-200 px), and :data:`WIDE`, a world that holds patterned and flat fills,
small and large objects and several image sides. Options left at their defaults draw
nothing from the random stream, so the default world's items are unchanged.

Book: ``book/01_attention.ipynb`` (the embedded model's world).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DatasetError
from ..items import GroundingDataset, GroundingItem

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 65, 195),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "big")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
BACKGROUND: tuple[int, int, int] = (150, 150, 150)

#: Seeds of the fixed splits; an item is f(SPLIT_SEEDS[split], index).
SPLIT_SEEDS: dict[str, int] = {"train": 1, "selection": 2, "heldout": 3}

#: Words any expression can use (the tokenizer's vocabulary is built from these).
VOCABULARY: tuple[str, ...] = tuple(
    ["the", "shape", "of"]
    + list(COLORS)
    + list(SHAPES)
    + list(SIZES)
    + sorted({w for r in RELATIONS for w in r.split()})
)


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of the shapes world, as fractions of the image side.

    Attributes:
        image_size: Side of the square image in pixels.
        min_objects: Fewest objects in a scene.
        max_objects: Most objects in a scene (fewer when they do not fit).
        small: (min, max) side of a small object, as a fraction of the image side.
        big: (min, max) side of a big object.
        gap: Least free space between two objects' boxes, fraction of the side.
        margin: Least space between an object and the image border.
        relational: Share of items that get a relational expression when one exists.
        distractor: Probability that each extra object copies the colour or the shape of
            an earlier object (distractors of the same kind).
        twin: Probability that a scene holds an exact copy (same size, colour and shape)
            of one of its objects; such objects can only be told apart by a relation.
        supersample: Objects are drawn at this multiple of the size, then downsampled
            (smooth edges).
        texture: Fill each shape kind with its own pattern (:data:`TEXTURES`), so that a
            small patch inside an object shows the object's kind (the embedded LVLM's
            vision features are local to each patch; see ``experiments/LOG.md``). On by
            default: the shipped model was trained on textured shapes. Off: every object
            is flat.
        flat: With ``texture`` on, the probability that an object is drawn with a flat
            fill instead of its kind's pattern (drawn per object; 0: none, 1: all). A
            circle's pattern is already solid, so a flat circle looks like a patterned one.
        scale: (min, max) factor on the object sides, drawn once per scene: below 1 the
            scene's objects are smaller (``small`` and ``big`` keep their order within
            the scene). (1, 1): no draw.
        image_sizes: (min, max) side in pixels of the drawn image, drawn per item, or None
            for ``image_size``. The model's processor resizes it to its canvas.
        shapes: The shape kinds a scene draws from (a subset of :data:`SHAPES`, in that
            order).
        name: The world's name, the first part of its items' ids (``"shapes/heldout/..."``)
            and the dataset name, so that items of two worlds never share an id.
    """

    image_size: int = 96
    min_objects: int = 2
    max_objects: int = 4
    small: tuple[float, float] = (0.29, 0.34)
    big: tuple[float, float] = (0.40, 0.46)
    gap: float = 0.015
    margin: float = 0.0
    relational: float = 0.5
    distractor: float = 0.6
    twin: float = 0.3
    supersample: int = 4
    texture: bool = True
    flat: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    image_sizes: tuple[int, int] | None = None
    shapes: tuple[str, ...] = SHAPES
    name: str = "shapes"

    def __post_init__(self):
        if not 0.0 <= self.flat <= 1.0:
            raise DatasetError(f"WorldConfig.flat = {self.flat}", "use a share in [0, 1].")
        lo, hi = self.scale
        if not 0.0 < lo <= hi:
            raise DatasetError(f"WorldConfig.scale = {self.scale}",
                               "use (min, max) factors with 0 < min <= max, e.g. (0.35, 1.0).")
        if self.image_sizes is not None:
            a, b = self.image_sizes
            if not 16 <= a <= b:
                raise DatasetError(f"WorldConfig.image_sizes = {self.image_sizes}",
                                   "use (min, max) sides in pixels with 16 <= min <= max, "
                                   "or None for image_size.")
        if not self.shapes or len(set(self.shapes)) != len(self.shapes) or not set(
                self.shapes) <= set(SHAPES):
            raise DatasetError(f"WorldConfig.shapes = {self.shapes}",
                               f"use distinct kinds among {', '.join(SHAPES)}.")

    def fills(self) -> tuple[str, ...]:
        """The fills objects of this world can have ("pattern", "flat")."""
        if not self.texture or self.flat >= 1:
            return ("flat",)
        return ("pattern", "flat") if self.flat > 0 else ("pattern",)


#: Fill pattern of each shape kind when ``WorldConfig.texture`` is on. Its bands are 1/48
#: of the image side wide (2 pixels at 96 px), so the period is one patch of the embedded
#: model's 24 x 24 grid and every patch inside an object shows its kind.
TEXTURES: dict[str, str] = {
    "circle": "solid",
    "square": "horizontal stripes",
    "triangle": "vertical stripes",
    "diamond": "checks",
}


#: Pictures made the way a new user draws them (issue 16): flat-coloured circles and
#: squares, no pattern, on the grey background, 2-3 objects, square images of 64 to 200
#: pixels, attribute expressions ("the red square"); objects of 0.6 to 1 times the default
#: sizes. Its items come from the held-out stream (never used for any choice) under their
#: own ids (``"drawn/heldout/000000"``).
DRAWN = WorldConfig(
    name="drawn", texture=False, min_objects=2, max_objects=3, shapes=("circle", "square"),
    image_sizes=(64, 200), scale=(0.6, 1.0), relational=0.0, twin=0.0,
)

#: A wider world to train and evaluate on: half the objects flat, the other half
#: patterned; scenes scaled by 0.35 to 1 (objects from about 0.1 of the image side, a few
#: grid cells, up to the default sizes); image sides of 64 to 200 pixels.
WIDE = WorldConfig(name="wide", flat=0.5, scale=(0.35, 1.0), image_sizes=(64, 200))

#: The easy world of experiments/LOG.md sections 8-14: the shipped world without relations,
#: distractors or twins, so that most expressions name one attribute ("the red shape").
EASY = WorldConfig(name="easy", relational=0.0, distractor=0.0, twin=0.0)

#: A crowded world (experiments/LOG.md sections 12 and 15): 5-8 smaller objects, no
#: relations or twins, so that a mixture of all objects' features says little about the
#: referent (a model that reads the answer out of such a mixture loses accuracy as the
#: object count grows).
CROWDED = WorldConfig(name="crowded", min_objects=5, max_objects=8, small=(0.13, 0.16),
                      big=(0.19, 0.22), relational=0.0, twin=0.0)

#: The named worlds (``python -m minilocal.toy.evaluate --world NAME``).
WORLDS: dict[str, WorldConfig] = {"shapes": WorldConfig(), "drawn": DRAWN, "wide": WIDE,
                                  "easy": EASY, "crowded": CROWDED}


def drawn_dataset(n: int = 100, start: int = 0) -> GroundingDataset:
    """Pictures as a user draws them: items ``start .. start + n - 1`` of :data:`DRAWN`.

    Book: ``book/05_grounding.ipynb``.
    """
    return shapes_dataset("heldout", n, start, cfg=DRAWN)


def _pattern(shape: str, side: int, band: float) -> np.ndarray:
    """[side, side] float in {0, 1}: where the shape's texture darkens its colour.

    Args:
        shape: One of :data:`SHAPES`.
        side: Canvas side in (supersampled) pixels.
        band: Band width in the same pixels.
    """
    yy, xx = (np.mgrid[0:side, 0:side] // band).astype(np.int64)
    kind = TEXTURES[shape]
    if kind == "horizontal stripes":
        return (yy % 2).astype(np.float64)
    if kind == "vertical stripes":
        return (xx % 2).astype(np.float64)
    if kind == "checks":
        return ((xx + yy) % 2).astype(np.float64)
    return np.zeros((side, side))


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        color: A key of :data:`COLORS`.
        shape: One of :data:`SHAPES`.
        size: "small" or "big".
        box: (x0, y0, x1, y1) of the shape's square frame in image pixels (float).
        fill: "pattern" (its kind's pattern, :data:`TEXTURES`) or "flat".
    """

    color: str
    shape: str
    size: str
    box: tuple[float, float, float, float]
    fill: str = "pattern"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def attribute(self, name: str) -> str:
        return getattr(self, name)


@dataclass
class Scene:
    """A rendered scene: its objects, image and per-object masks.

    Attributes:
        objects: The objects, in drawing order.
        image: [S, S, 3] uint8 RGB.
        masks: [n, S, S] bool, one per object (objects never overlap).
    """

    objects: list[ShapeObject]
    image: np.ndarray
    masks: np.ndarray = field(repr=False)

    def box(self, i: int) -> np.ndarray:
        """[4] float64 xyxy pixel box of object ``i``: the tight box of its mask."""
        rows, cols = np.nonzero(self.masks[i])
        return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


# ----------------------------------------------------------------------------- scenes
def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    raise ValueError(shape)


def _render(
    objects: list[ShapeObject], cfg: WorldConfig, side: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the objects on an image of ``side`` pixels (default ``cfg.image_size``).

    Returns image [S, S, 3] uint8 and masks [n, S, S] bool.
    """
    S, k = (cfg.image_size if side is None else side), cfg.supersample
    big = Image.new("RGB", (S * k, S * k), BACKGROUND)
    masks = []
    for obj in objects:
        layer = Image.new("L", (S * k, S * k), 0)
        ldraw = ImageDraw.Draw(layer)
        sbox = tuple(v * k for v in obj.box)
        # PIL's ellipse/polygon include the end pixel; shrink by one so the shape ends at x1.
        sbox = (sbox[0], sbox[1], sbox[2] - 1, sbox[3] - 1)
        if obj.shape == "circle":
            ldraw.ellipse(sbox, fill=255)
        else:
            ldraw.polygon(_polygon(obj.shape, sbox), fill=255)
        # the shape is drawn once, into its mask layer; the image takes its colour there
        if obj.fill == "pattern":
            inside = np.asarray(layer) > 0  # [S*k, S*k]
            dark = _pattern(obj.shape, S * k, S * k / 48)[..., None]  # [S*k, S*k, 1]
            fill = np.asarray(COLORS[obj.color], np.float64) * (1.0 - 0.4 * dark)
            canvas = np.asarray(big).copy()
            canvas[inside] = np.round(fill[inside]).astype(np.uint8)
            big = Image.fromarray(canvas)
        else:
            big.paste(COLORS[obj.color], mask=layer)
        cover = np.asarray(layer.resize((S, S), Image.Resampling.BOX), dtype=np.float64) / 255
        masks.append(cover >= 0.5)
    image = np.asarray(big.resize((S, S), Image.Resampling.BOX), dtype=np.uint8)
    return image, np.stack(masks)


def _place(rng: np.random.Generator, sides: list[float], cfg: WorldConfig, S: int | None = None):
    """Non-overlapping square frames for objects of the given sides (pixels), or None.

    ``S`` is the image side (default ``cfg.image_size``).
    """
    S = cfg.image_size if S is None else S
    gap, margin = cfg.gap * S, cfg.margin * S
    boxes: list[tuple[float, float, float, float]] = []
    for side in sides:
        for _ in range(60):
            x0 = rng.uniform(margin, S - margin - side)
            y0 = rng.uniform(margin, S - margin - side)
            b = (x0, y0, x0 + side, y0 + side)
            if all(
                b[0] >= o[2] + gap or o[0] >= b[2] + gap or b[1] >= o[3] + gap or o[1] >= b[3] + gap
                for o in boxes
            ):
                boxes.append(b)
                break
        else:
            return None
    return boxes


def sample_scene(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> Scene:
    """Draw a random scene: 2-5 objects (fewer if they do not fit), with distractors.

    The first object is the "seed" whose colour or shape later objects copy with
    probability ``cfg.distractor``, so scenes hold objects of the same kind. The image
    side, the scene's scale and the flat fills are drawn only when the world asks for
    them (``image_sizes``, ``scale``, ``flat``), so the default world's scenes do not
    depend on those options.

    Args:
        rng: The random generator (consumed).
        cfg: World geometry.

    Returns:
        The rendered scene.

    Book: ``book/01_attention.ipynb``.
    """
    colors, shapes = list(COLORS), list(cfg.shapes)
    S = cfg.image_size
    if cfg.image_sizes is not None:
        S = int(rng.integers(cfg.image_sizes[0], cfg.image_sizes[1] + 1))
    while True:
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        attrs = []
        for i in range(n):
            c = colors[rng.integers(len(colors))]
            s = shapes[rng.integers(len(shapes))]
            z = SIZES[rng.integers(2)]
            if i > 0 and rng.random() < cfg.distractor:
                ref = attrs[int(rng.integers(i))]
                if rng.random() < 0.5:
                    c = ref[0]
                else:
                    s = ref[1]
            attrs.append((c, s, z))
        if n >= 3 and rng.random() < cfg.twin:
            attrs[-1] = attrs[int(rng.integers(n - 1))]
        # big objects first: they are the hardest to place
        order = sorted(range(n), key=lambda i: attrs[i][2] != "big")
        f = 1.0 if tuple(cfg.scale) == (1.0, 1.0) else float(rng.uniform(*cfg.scale))
        sides = [
            rng.uniform(*(cfg.big if attrs[i][2] == "big" else cfg.small)) * S * f
            for i in order
        ]
        boxes = None
        while boxes is None and sides:
            boxes = _place(rng, sides, cfg, S)
            if boxes is None:
                if len(sides) <= cfg.min_objects:
                    break
                sides, order = sides[:-1], order[:-1]  # drop the last (smallest) object
        if boxes is None:
            continue
        if not cfg.texture or cfg.flat >= 1:
            fills = ["flat"] * len(boxes)
        elif cfg.flat > 0:
            fills = ["flat" if rng.random() < cfg.flat else "pattern" for _ in boxes]
        else:
            fills = ["pattern"] * len(boxes)
        objects = [
            ShapeObject(attrs[i][0], attrs[i][1], attrs[i][2], tuple(float(v) for v in b), fl)
            for i, b, fl in zip(order, boxes, fills)
        ]
        image, masks = _render(objects, cfg, S)
        if all(m.any() for m in masks):
            return Scene(objects, image, masks)


# ----------------------------------------------------------------------------- expressions
_ATTRS = ("size", "color", "shape")


def _phrase(obj: ShapeObject, attrs: tuple[str, ...]) -> str:
    """Noun phrase from a subset of attributes: "the small red circle", "the red shape"."""
    words = ["the"]
    if "size" in attrs:
        words.append(obj.size)
    if "color" in attrs:
        words.append(obj.color)
    words.append(obj.shape if "shape" in attrs else "shape")
    return " ".join(words)


def _matches(objects: list[ShapeObject], ref: ShapeObject, attrs: tuple[str, ...]) -> list[int]:
    return [
        i for i, o in enumerate(objects) if all(o.attribute(a) == ref.attribute(a) for a in attrs)
    ]


def minimal_descriptions(objects: list[ShapeObject], target: int) -> list[tuple[str, ...]]:
    """All smallest attribute subsets that match only ``objects[target]`` ([] if none)."""
    for k in (1, 2, 3):
        found = [
            a
            for a in itertools.combinations(_ATTRS, k)
            if _matches(objects, objects[target], a) == [target]
        ]
        if found:
            return found
    return []


def _relation_holds(rel: str, a: ShapeObject, b: ShapeObject) -> bool:
    """``a`` is clearly ``rel`` ``b``: centres apart by more than half the larger object."""
    (ax, ay), (bx, by) = a.center, b.center
    sep = max(a.box[2] - a.box[0], b.box[2] - b.box[0]) / 2
    return {
        "left of": bx - ax > sep,
        "right of": ax - bx > sep,
        "above": by - ay > sep,
        "below": ay - by > sep,
    }[rel]


def _relation_fails(rel: str, a: ShapeObject, b: ShapeObject) -> bool:
    """``a`` is clearly NOT ``rel`` ``b`` (its centre lies on the other side)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {
        "left of": ax > bx,
        "right of": ax < bx,
        "above": ay > by,
        "below": ay < by,
    }[rel]


def relational_descriptions(objects: list[ShapeObject], target: int) -> list[str]:
    """Shortest relational expressions that pick ``objects[target]`` and no other object.

    Head phrase: the fewest attributes of the target that match 2 or more objects (so the
    relation is needed); anchor: another object with a unique description of at most two
    attributes (its shortest); the relation holds clearly for the target and clearly fails
    for every other object that the head phrase matches.
    """
    t = objects[target]
    for k in (1, 2, 3):
        out = []
        for head in itertools.combinations(_ATTRS, k):
            group = _matches(objects, t, head)
            if len(group) < 2:
                continue
            for j, anchor in enumerate(objects):
                if j in group:
                    continue
                anchor_descs = minimal_descriptions(objects, j)
                if not anchor_descs or len(anchor_descs[0]) > 2:
                    continue
                for rel in RELATIONS:
                    if _relation_holds(rel, t, anchor) and all(
                        _relation_fails(rel, objects[i], anchor) for i in group if i != target
                    ):
                        out += [f"{_phrase(t, head)} {rel} {_phrase(anchor, a)}" for a in anchor_descs]
        if out:
            return out
    return []


def describe(
    objects: list[ShapeObject], target: int, rng: np.random.Generator, kind: str
) -> tuple[str, str] | None:
    """A referring expression for ``objects[target]`` and its kind, or None if none exists.

    Args:
        objects: The scene's objects.
        target: Index of the referent.
        rng: Random generator (picks among equally short expressions).
        kind: "relational" or "attribute": the kind wanted; the other kind is used when
            the wanted one does not exist for this target.

    Returns:
        (expr, kind) with kind "attribute" or "relational".
    """
    rel = relational_descriptions(objects, target)
    attr = minimal_descriptions(objects, target)
    if rel and (kind == "relational" or not attr):
        return rel[int(rng.integers(len(rel)))], "relational"
    if attr:
        return _phrase(objects[target], attr[int(rng.integers(len(attr)))]), "attribute"
    return None


def referents(expr: str, objects: list[ShapeObject]) -> list[int]:
    """Indices of the objects an expression of this world picks (a parser, for tests).

    Args:
        expr: An expression produced by :func:`describe`.
        objects: The scene's objects.

    Returns:
        The indices of all objects the expression describes.
    """

    def parse(words: list[str]) -> dict:
        want = {}
        for w in words:
            if w in SIZES:
                want["size"] = w
            elif w in COLORS:
                want["color"] = w
            elif w in SHAPES:
                want["shape"] = w
        return want

    def match(want: dict) -> list[int]:
        return [i for i, o in enumerate(objects) if all(o.attribute(a) == v for a, v in want.items())]

    for rel in RELATIONS:
        key = f" {rel} the "
        if key in expr:
            head, anchor = expr.split(key)
            heads, anchors = match(parse(head.split())), match(parse(anchor.split()))
            if len(anchors) != 1:
                return []
            a = objects[anchors[0]]
            return [i for i in heads if i != anchors[0] and _relation_holds(rel, objects[i], a)]
    return match(parse(expr.split()))


# ----------------------------------------------------------------------------- items
@dataclass
class ShapesSample:
    """One scene with one or more referents and their expressions.

    Attributes:
        scene: The scene.
        targets: Index of each referent in ``scene.objects``.
        exprs: The expression of each referent.
        kinds: "attribute" or "relational" for each.
    """

    scene: Scene
    targets: list[int]
    exprs: list[str]
    kinds: list[str]


def sample(
    rng: np.random.Generator, cfg: WorldConfig = WorldConfig(), questions: int = 1
) -> ShapesSample:
    """A scene with up to ``questions`` distinct referents that can be described.

    For each question a kind is drawn ("relational" with probability ``cfg.relational``)
    and the referent is drawn among the objects that have an expression of that kind
    (among all describable objects when none has).

    Args:
        rng: Random generator (consumed).
        cfg: World geometry.
        questions: Most referents to describe (fewer when the scene has fewer describable
            objects; always at least one).

    Returns:
        The sample.

    Book: ``book/01_attention.ipynb``.
    """
    while True:
        scene = sample_scene(rng, cfg)
        objects = scene.objects
        targets, exprs, kinds = [], [], []
        for _ in range(questions):
            left = [i for i in range(len(objects)) if i not in targets]
            want = "relational" if rng.random() < cfg.relational else "attribute"
            found = {
                i: (describe(objects, i, rng, want) if left else None) for i in left
            }
            found = {i: d for i, d in found.items() if d is not None}
            if not found:
                break
            preferred = [i for i, d in found.items() if d[1] == want] or list(found)
            t = preferred[int(rng.integers(len(preferred)))]
            targets.append(t)
            exprs.append(found[t][0])
            kinds.append(found[t][1])
        if targets:
            return ShapesSample(scene, targets, exprs, kinds)


def item_rng(split: str, index: int) -> np.random.Generator:
    """The random generator of item ``index`` of ``split`` (the item is a function of it)."""
    if split not in SPLIT_SEEDS:
        raise DatasetError(
            f"unknown shapes split {split!r}",
            f"use one of {', '.join(SPLIT_SEEDS)}.",
        )
    if index < 0:
        raise DatasetError(f"negative item index {index}", "use an index >= 0.")
    return np.random.default_rng([SPLIT_SEEDS[split], int(index)])


def shapes_sample(split: str, index: int, cfg: WorldConfig = WorldConfig(), questions: int = 1):
    """The sample of item ``index`` of ``split`` (deterministic)."""
    return sample(item_rng(split, index), cfg, questions)


def _item_from_sample(split: str, index: int, s: ShapesSample, name: str = "shapes"
                      ) -> GroundingItem:
    t = s.targets[0]
    image, mask = s.scene.image, s.scene.masks[t]
    obj = s.scene.objects[t]
    return GroundingItem(
        item_id=f"{name}/{split}/{index:06d}",
        expr=s.exprs[0],
        box=s.scene.box(t),
        image_id=f"{name}/{split}/{index:06d}",
        dataset=name,
        split=split,
        load_image=partial(Image.fromarray, image),
        load_mask=mask.copy,
        meta={
            "kind": s.kinds[0],
            "target": t,
            "n_objects": len(s.scene.objects),
            "color": obj.color,
            "shape": obj.shape,
            "size": obj.size,
            "fill": obj.fill,
        },
    )


def shapes_item(split: str, index: int, cfg: WorldConfig = WorldConfig()) -> GroundingItem:
    """Item ``index`` of ``split`` as a :class:`~minilocal.data.GroundingItem`.

    Args:
        split: "train", "selection" or "heldout".
        index: Item number (>= 0); any index is valid (unlimited stream).
        cfg: World geometry (the default is the world of the shipped model).

    Returns:
        The item; its id is ``"<cfg.name>/<split>/<index:06d>"`` (``"shapes/..."`` for
        the default world).

    Raises:
        DatasetError: Unknown split or negative index.

    Book: ``book/01_attention.ipynb``.
    """
    return _item_from_sample(split, index, shapes_sample(split, index, cfg), cfg.name)


def shapes_dataset(
    split: str, n: int, start: int = 0, cfg: WorldConfig = WorldConfig()
) -> GroundingDataset:
    """Items ``start .. start + n - 1`` of a split, as a :class:`~minilocal.data.GroundingDataset`.

    Book: ``book/01_attention.ipynb``.
    """
    if n < 0:
        raise DatasetError(f"negative dataset size {n}", "ask for n >= 0 items.")
    item_rng(split, start)  # an unknown split or a negative start raises now, not on first use
    return GroundingDataset(_ShapesItems(split, range(start, start + n), cfg),
                            name=f"{cfg.name}/{split}")


class _ShapesItems(Sequence):
    """Items of a shapes split, each rendered on first access (a draw of 50 items out of
    1000 renders 50 scenes, not 1000)."""

    lazy = True

    def __init__(self, split: str, indices: range, cfg: WorldConfig, rendered=None):
        self.split, self.indices, self.cfg = split, indices, cfg
        self._rendered = {} if rendered is None else rendered

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _ShapesItems(self.split, self.indices[i], self.cfg, self._rendered)
        index = self.indices[i]
        if index not in self._rendered:
            self._rendered[index] = shapes_item(self.split, index, self.cfg)
        return self._rendered[index]
