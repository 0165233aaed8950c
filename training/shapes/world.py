"""The Shapes world: scenes of one or two coloured shapes on a plain background, with captions and questions.

A world small enough to train a Harmon from scratch on a CPU, and simple enough that a program (checker.py)
can say whether a generated image shows what its prompt asked for. Everything is a pure function of a seed.

Scene kinds (GenEval-like categories):
- `single`: one object, e.g. "a red circle on the left";
- `two`: two different objects in a spatial relation, e.g. "a blue square above a green triangle";
- `count`: two identical objects, e.g. "two yellow circles".
"""

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


IMAGE_SIZE = 32
BACKGROUND = (235, 235, 235)
SHAPES = ("circle", "square", "triangle")
# Well separated in RGB so a nearest-palette rule recovers them exactly.
COLORS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 180),
    "orange": (245, 135, 25),
}
POSITIONS = ("left", "right", "top", "bottom", "center")
# Object centre (x, y) in a 32 px image for each position.
CENTERS = {"left": (8, 16), "right": (24, 16), "top": (16, 8), "bottom": (16, 24), "center": (16, 16)}
# Two-object relations: (relation phrase, position of the first object, position of the second).
RELATIONS = (
    ("to the left of", "left", "right"),
    ("to the right of", "right", "left"),
    ("above", "top", "bottom"),
    ("below", "bottom", "top"),
)
NUMBER_WORDS = {1: "one", 2: "two"}
# (colour, shape) pairs never shown in training: generating and answering about them is compositional
# generalisation, reported separately ("held_out").
HELD_OUT_PAIRS = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "square")})
OBJECT_SIZE = 11  # pixels across


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    position: str


@dataclass(frozen=True)
class Scene:
    kind: str  # single | two | count
    objects: tuple[ShapeObject, ...]
    relation: str | None = None  # for `two`: the phrase relating objects[0] to objects[1]

    @property
    def held_out(self) -> bool:
        return any((obj.color, obj.shape) in HELD_OUT_PAIRS for obj in self.objects)

    def caption(self) -> str:
        first = self.objects[0]
        if self.kind == "single":
            return f"{_article(first.color)} {first.color} {first.shape} {_position_phrase(first.position)}"
        if self.kind == "count":
            return f"{NUMBER_WORDS[len(self.objects)]} {first.color} {first.shape}s"
        second = self.objects[1]
        return (
            f"{_article(first.color)} {first.color} {first.shape} {self.relation} "
            f"{_article(second.color)} {second.color} {second.shape}"
        )

    def picture_caption(self) -> str:
        """`caption()` with a two-object scene's objects named in reading order (left before right, top before
        bottom), so that each picture has one: `caption()` names them in the scene's own order, which a picture does
        not show ("a red circle to the left of a blue square" and "a blue square to the right of a red circle" draw
        the same). What a model that describes pictures is taught to write."""
        if self.kind != "two" or self.objects[0].position in ("left", "top"):
            return self.caption()
        second, first = self.objects
        return Scene("two", (first, second), relation_between(first.position, second.position)).caption()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"on the {position}"


def _allowed(color: str, shape: str, split: str) -> bool:
    held = (color, shape) in HELD_OUT_PAIRS
    return held if split == "held_out" else not held


def sample_scene(rng: random.Random, split: str = "train", kind: str | None = None) -> Scene:
    """A random scene. `split="train"` never uses a held-out (colour, shape) pair; `"held_out"` always includes one."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}.")
    kind = kind or rng.choice(("single", "single", "two", "count"))
    if kind not in ("single", "two", "count"):
        raise ValueError(f"kind must be single, two or count, got {kind!r}.")
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    if kind == "single":
        color, shape = rng.choice([p for p in pairs if _allowed(*p, split)])
        return Scene("single", (ShapeObject(shape, color, rng.choice(POSITIONS)),))
    if kind == "count":
        color, shape = rng.choice([p for p in pairs if _allowed(*p, split)])
        first, second = rng.choice((("left", "right"), ("top", "bottom")))
        return Scene("count", (ShapeObject(shape, color, first), ShapeObject(shape, color, second)))
    while True:
        (c1, s1), (c2, s2) = rng.sample(pairs, 2)
        if s1 == s2 or c1 == c2:
            continue  # distinct colours and shapes, so every question about the scene has one answer
        held = (c1, s1) in HELD_OUT_PAIRS or (c2, s2) in HELD_OUT_PAIRS
        if held == (split == "held_out"):
            break
    relation, p1, p2 = rng.choice(RELATIONS)
    return Scene("two", (ShapeObject(s1, c1, p1), ShapeObject(s2, c2, p2)), relation)


def render(scene: Scene, rng: random.Random | None = None) -> Image.Image:
    """The scene as a 32 px RGB image; `rng` jitters sizes and positions by a pixel or two."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = CENTERS[obj.position]
        size = OBJECT_SIZE
        if rng is not None:
            cx, cy, size = cx + rng.randint(-1, 1), cy + rng.randint(-1, 1), size + rng.randint(-1, 1)
        half = size / 2
        box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question type, question, answer) triples with one correct answer each (types: color, shape, position,
    count, exists)."""
    objs = scene.objects
    items = [("count", "how many shapes are there?", NUMBER_WORDS[len(objs)])]
    if scene.kind in ("single", "two"):
        for obj in objs:
            items.append(("color", f"what color is the {obj.shape}?", obj.color))
            if scene.kind == "two" or obj.position != "center":
                where = _position_phrase(obj.position)
                items.append(("shape", f"what shape is {where}?", obj.shape))
            items.append(("position", f"where is the {obj.color} {obj.shape}?", obj.position))
    else:
        items.append(("color", f"what color are the {objs[0].shape}s?", objs[0].color))
        items.append(("shape", f"what shape are the {objs[0].color} objects?", objs[0].shape))
    present = {(obj.color, obj.shape) for obj in objs}
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    items.append(
        ("exists", f"is there {_article(color)} {color} {shape}?", "yes" if (color, shape) in present else "no")
    )
    first = objs[0]
    items.append(("exists", f"is there {_article(first.color)} {first.color} {first.shape}?", "yes"))
    return items


def vocabulary() -> list[str]:
    """Every word of every caption, question and answer of the world (for the word-level tokenizer)."""
    words = set(
        "a an the on in of to is are there what where how many color shape shapes objects center left "
        "right top bottom above below yes no one two generate image describe".split()
    )
    words |= set(COLORS) | set(SHAPES) | {f"{shape}s" for shape in SHAPES}
    return sorted(words) + ["?", ".", ":", ","]


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ issue 25 additions
# Opposite edge of each edge position: where a second object goes beside a first one (add), and what a swap exchanges.
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def relation_between(first: str, second: str) -> str:
    """The relation phrase of `RELATIONS` that puts an object at position `first` and another at `second` (a
    `two` scene's relation); a ValueError for positions no two-object scene has."""
    for phrase, p1, p2 in RELATIONS:
        if (p1, p2) == (first, second):
            return phrase
    raise ValueError(f"no two-object relation puts one object at {first!r} and the other at {second!r}.")


def valid_scene(scene: Scene) -> bool:
    """Whether `scene` is one that `sample_scene` could produce (either split): the rules an edit's target must keep
    so that every caption and question about it still has one answer."""
    objects = scene.objects
    if any(o.color not in COLORS or o.shape not in SHAPES or o.position not in POSITIONS for o in objects):
        return False
    if scene.kind == "single":
        return len(objects) == 1 and scene.relation is None
    if scene.kind == "count":
        if len(objects) != 2 or scene.relation is not None:
            return False
        first, second = objects
        same = (first.color, first.shape) == (second.color, second.shape)
        return same and (first.position, second.position) in (("left", "right"), ("top", "bottom"))
    if scene.kind == "two":
        if len(objects) != 2:
            return False
        first, second = objects
        if first.color == second.color or first.shape == second.shape:
            return False
        return any(
            (phrase, p1, p2) == (scene.relation, first.position, second.position) for phrase, p1, p2 in RELATIONS
        )
    return False


def extended_vocabulary() -> list[str]:
    """`vocabulary()` followed by the words of the free phrasings and edit instructions (phrasings.py, edits.py), so
    the ids of the original words stay what they are in the shipped tokenizer."""
    from .phrasings import added_words  # phrasings builds on this module

    return vocabulary() + added_words()
