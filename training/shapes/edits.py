"""Instruction edits in the Shapes world (issue 25): a source scene, an instruction, and the ground-truth target scene.

Operations, each keeping the world's rules (world.valid_scene: two objects differ in colour and shape, positions are
those the world draws, no held-out colour-shape pair of world.HELD_OUT_PAIRS in source or target):

- `recolor`: one object of a one- or two-object scene, or both objects of a counting scene, gets another colour;
- `reshape`: the same with another shape;
- `move`: the object of a one-object scene goes to another of the five positions;
- `add`: a one-object scene (not centred) gets a second object on the opposite side, another one (a `two` scene) or
  the same one again (a counting scene: "add another circle");
- `remove`: one object of a two-object or counting scene goes, the other stays where it was;
- `swap`: the two objects of a two-object scene exchange places.

Each operation has several instruction phrasings ("make the circle blue", "change the color of the circle to blue",
"turn the red circle blue", ...). Two things are held out of the train split, so a model's score on them measures
generalisation: (operation, colour, shape) combinations of `HELD_OUT_COMBOS` (the colour and shape of the object the
edit is about, after the edit: the new colour of a recolour, the added object, the removed one, either swapped one)
and the instruction phrasings of `INSTRUCTIONS[op]["held_out"]`, new sentence structures made of words the train
phrasings use.

    edit = sample_edit(random.Random(0), "train")        # .source, .instruction, .target, .operation, flags
    source, target = render_edit(edit, random.Random(0))  # untouched objects drawn on the same pixels in both
"""

import random
from dataclasses import dataclass, replace

from PIL import Image

from .phrasings import template_words
from .world import (
    COLORS,
    HELD_OUT_PAIRS,
    OPPOSITE,
    POSITIONS,
    SHAPES,
    Scene,
    ShapeObject,
    _article,
    _position_phrase,
    relation_between,
    render,
    sample_scene,
    valid_scene,
)


OPERATIONS = ("recolor", "reshape", "move", "add", "remove", "swap")
SPLITS = ("train", "held_out_combo", "held_out_phrasing")
# (operation, colour, shape) never produced in the train split; none is a world held-out pair (those never occur).
HELD_OUT_COMBOS = frozenset(
    {
        ("recolor", "blue", "circle"),
        ("recolor", "yellow", "triangle"),
        ("reshape", "red", "square"),
        ("reshape", "purple", "circle"),
        ("move", "orange", "triangle"),
        ("move", "green", "circle"),
        ("add", "yellow", "square"),
        ("add", "blue", "triangle"),
        ("remove", "red", "triangle"),
        ("remove", "orange", "square"),
        ("swap", "purple", "square"),
        ("swap", "yellow", "circle"),
    }
)
# Instruction templates. Fields: obj (the object or objects the edit is about, as the source shows them: "the
# circle", "the red circle", "the red shape"; for a counting scene "the circles", "both circles", ...), color (new
# colour), shape_a / colored_shape_a (new shape: "a square", "a red square"; plural for counting scenes), pos / where
# / old (target position word, its phrase "on the left", the source position word), new (the added object: "a green
# triangle", "another red circle"), rel (the added object's relation to the existing one), other (the object that
# stays), obj1 / obj2 (the swapped objects).
INSTRUCTIONS = {
    "recolor": {
        "train": (
            "make {obj} {color}",
            "change the color of {obj} to {color}",
            "turn {obj} {color}",
            "paint {obj} {color}",
            "color {obj} {color}",
        ),
        "held_out": ("change {obj} to {color}", "{obj} should be {color}"),
    },
    "reshape": {
        "train": (
            "make {obj} {shape_a}",
            "turn {obj} into {shape_a}",
            "change the shape of {obj} to {shape_a}",
            "replace {obj} with {colored_shape_a}",
            "{obj} should be {shape_a}",
        ),
        "held_out": ("make {obj} into {shape_a}", "change {obj} into {shape_a}"),
    },
    "move": {
        "train": (
            "move {obj} to the {pos}",
            "put {obj} {where}",
            "place {obj} {where}",
            "move {obj} from the {old} to the {pos}",
            "{obj} should be {where}",
        ),
        "held_out": ("take {obj} to the {pos}", "let {obj} be {where}"),
    },
    "add": {
        "train": (
            "add {new}",
            "add {new} {where}",
            "add {new} {rel} {obj}",
            "put {new} {rel} {obj}",
            "draw {new} {where}",
        ),
        "held_out": ("draw {new} {rel} {obj}", "{where}, add {new}"),
    },
    "remove": {
        "train": (
            "remove {obj}",
            "delete {obj}",
            "take away {obj}",
            "erase {obj}",
            "remove {obj} and keep {other}",
        ),
        "held_out": ("take {obj} away", "keep {other} and remove {obj}"),
    },
    "swap": {
        "train": (
            "swap {obj1} and {obj2}",
            "switch {obj1} and {obj2}",
            "swap the two shapes",
            "let {obj1} and {obj2} change places",
            "put {obj1} where {obj2} is and {obj2} where {obj1} is",
        ),
        "held_out": ("switch the two shapes", "let the two shapes change places"),
    },
}
# How an instruction names objects (see INSTRUCTIONS); {c} {s} {pos} are the object's colour, shape and position.
REFERENCES = ("the {s}", "the {c} {s}", "the {c} shape")
PLURAL_REFERENCES = ("the {s}s", "the two {s}s", "both {s}s", "the {c} {s}s")
ONE_OF_TWO_REFERENCES = ("the {s} on the {pos}", "the {pos} {s}", "the {c} {s} on the {pos}")  # counting scenes
SAME_AGAIN = ("another {c} {s}", "a second {c} {s}", "another {s}")  # the object added to make a counting scene
MAX_TRIES = 10_000


@dataclass(frozen=True)
class Edit:
    """One edit: `instruction` turns `source` into `target` by `operation`.

    `kept`: the source objects the instruction does not touch (an edit must leave them as they are: colour, shape,
    position); `origin[i]`: the index in `source.objects` that target object i comes from (None: added), so a
    renderer can draw an object on the same pixels in both; `subjects`: the (operation, colour, shape) combinations
    the edit is about; `phrasing`: the index of the instruction template in its split."""

    source: Scene
    instruction: str
    target: Scene
    operation: str
    held_out_combo: bool
    held_out_phrasing: bool
    kept: tuple[ShapeObject, ...]
    origin: tuple[int | None, ...]
    subjects: tuple[tuple[str, str, str], ...]
    phrasing: int


def _reference(obj: ShapeObject, rng: random.Random, forms=REFERENCES) -> str:
    return rng.choice(forms).format(c=obj.color, s=obj.shape, pos=obj.position)


def _allowed_pair(color: str, shape: str) -> bool:
    return (color, shape) not in HELD_OUT_PAIRS


def _two(objects: tuple[ShapeObject, ShapeObject]) -> Scene:
    """A `two` scene of `objects` in this order, with the relation their positions make."""
    return Scene("two", objects, relation_between(objects[0].position, objects[1].position))


def _recolor_or_reshape(rng: random.Random, operation: str):
    kind = rng.choice(("single", "two", "count"))
    source = sample_scene(rng, "train", kind)
    attribute = "color" if operation == "recolor" else "shape"
    values = COLORS if attribute == "color" else SHAPES
    objects = source.objects
    if kind == "count":
        changed, refs = (0, 1), PLURAL_REFERENCES
    else:
        changed, refs = (rng.randrange(len(objects)),), REFERENCES
    first = objects[changed[0]]
    taken = {getattr(obj, attribute) for obj in objects}  # the other object's too: two objects keep differing
    pairs = {value: (value, first.shape) if attribute == "color" else (first.color, value) for value in values}
    choices = [value for value in values if value not in taken and _allowed_pair(*pairs[value])]
    if not choices:
        return None
    value = rng.choice(choices)
    target_objects = tuple(
        replace(obj, **{attribute: value}) if i in changed else obj for i, obj in enumerate(objects)
    )
    target = replace(source, objects=target_objects)
    edited = target_objects[changed[0]]
    kept = tuple(obj for i, obj in enumerate(objects) if i not in changed)
    plural = kind == "count"
    shape_a = f"{value}s" if plural else f"{_article(value)} {value}"
    colored = f"{first.color} {value}s" if plural else f"{_article(first.color)} {first.color} {value}"
    fields = {"obj": _reference(first, rng, refs), "color": value, "shape_a": shape_a, "colored_shape_a": colored}
    origin = tuple(range(len(objects)))
    return source, target, kept, origin, ((operation, edited.color, edited.shape),), fields


def _move(rng: random.Random):
    source = sample_scene(rng, "train", "single")
    obj = source.objects[0]
    position = rng.choice([p for p in POSITIONS if p != obj.position])
    target = Scene("single", (replace(obj, position=position),))
    fields = {"obj": _reference(obj, rng), "pos": position, "where": _position_phrase(position), "old": obj.position}
    return source, target, (), (0,), (("move", obj.color, obj.shape),), fields


def _add(rng: random.Random):
    source = sample_scene(rng, "train", "single")
    existing = source.objects[0]
    if existing.position not in OPPOSITE:
        return None  # a centred object leaves no place a second object of the world could take
    position = OPPOSITE[existing.position]
    if rng.random() < 1 / 3:  # the same object again: a counting scene
        added = replace(existing, position=position)
        new = _reference(existing, rng, SAME_AGAIN)
        pair = (existing, added) if existing.position in ("left", "top") else (added, existing)
        target = Scene("count", pair)
        origin = (0, None) if pair[0] is existing else (None, 0)
    else:
        pairs = [
            (c, s)
            for c in COLORS
            for s in SHAPES
            if c != existing.color and s != existing.shape and _allowed_pair(c, s)
        ]
        color, shape = rng.choice(pairs)
        added = ShapeObject(shape, color, position)
        new = f"{_article(color)} {color} {shape}"
        target, origin = _two((existing, added)), (0, None)
    fields = {
        "new": new,
        "where": _position_phrase(position),
        "rel": relation_between(position, existing.position),
        "obj": _reference(existing, rng),
    }
    return source, target, (existing,), origin, (("add", added.color, added.shape),), fields


def _remove(rng: random.Random):
    kind = rng.choice(("two", "count"))
    source = sample_scene(rng, "train", kind)
    index = rng.randrange(2)
    removed, stays = source.objects[index], source.objects[1 - index]
    forms = ONE_OF_TWO_REFERENCES if kind == "count" else REFERENCES
    fields = {"obj": _reference(removed, rng, forms), "other": _reference(stays, rng, forms)}
    target = Scene("single", (stays,))
    return source, target, (stays,), (1 - index,), (("remove", removed.color, removed.shape),), fields


def _swap(rng: random.Random):
    source = sample_scene(rng, "train", "two")
    first, second = source.objects
    target = _two((replace(first, position=second.position), replace(second, position=first.position)))
    named = [first, second]
    rng.shuffle(named)
    fields = {"obj1": _reference(named[0], rng), "obj2": _reference(named[1], rng)}
    subjects = tuple(("swap", obj.color, obj.shape) for obj in source.objects)
    return source, target, (), (0, 1), subjects, fields


def _propose(rng: random.Random, operation: str):
    if operation in ("recolor", "reshape"):
        return _recolor_or_reshape(rng, operation)
    return {"move": _move, "add": _add, "remove": _remove, "swap": _swap}[operation](rng)


def sample_edit(rng: random.Random, split: str = "train", operation: str | None = None) -> Edit:
    """A random edit of `operation` (default: one drawn from OPERATIONS). `split`:
    - "train": no held-out combination, a train phrasing (the only split make_data writes);
    - "held_out_combo": a held-out (operation, colour, shape) combination, a train phrasing;
    - "held_out_phrasing": no held-out combination, a held-out phrasing.
    Source and target always obey the world's rules and never show a held-out colour-shape pair."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    operation = operation or rng.choice(OPERATIONS)
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}.")
    for _ in range(MAX_TRIES):
        proposal = _propose(rng, operation)
        if proposal is None:
            continue
        source, target, kept, origin, subjects, fields = proposal
        held_combo = any(subject in HELD_OUT_COMBOS for subject in subjects)
        if held_combo != (split == "held_out_combo") or target.held_out or source.held_out:
            continue
        if not (valid_scene(source) and valid_scene(target)):  # a bug in an operation, not bad luck
            raise AssertionError(f"{operation} made an invalid scene: {source} -> {target}")
        phrasing_split = "held_out" if split == "held_out_phrasing" else "train"
        templates = INSTRUCTIONS[operation][phrasing_split]
        phrasing = rng.randrange(len(templates))
        instruction = templates[phrasing].format(**fields)
        return Edit(
            source,
            instruction,
            target,
            operation,
            held_combo,
            phrasing_split == "held_out",
            kept,
            origin,
            subjects,
            phrasing,
        )
    raise RuntimeError(f"no {operation} edit for split {split!r} in {MAX_TRIES} tries.")


class _Replay:
    """Stands in for `render`'s rng: returns recorded jitter draws in order, so one object's jitter can be drawn
    again for another scene (world.render draws three per object: x, y, size)."""

    def __init__(self, draws: list[int]):
        self._draws = iter(draws)

    def randint(self, low: int, high: int) -> int:
        return next(self._draws)


def render_edit(edit: Edit, rng: random.Random | None = None) -> tuple[Image.Image, Image.Image]:
    """(source, target) images. With `rng`, each object gets the renderer's jitter, the same in both images for the
    object it stays (an untouched object lands on the same pixels, as a pixel-aligned edit pair needs), fresh for
    an added one."""
    if rng is None:
        return render(edit.source), render(edit.target)
    jitter = [[rng.randint(-1, 1) for _ in range(3)] for _ in edit.source.objects]
    target_draws = []
    for index in edit.origin:
        target_draws += jitter[index] if index is not None else [rng.randint(-1, 1) for _ in range(3)]
    source_draws = [value for draws in jitter for value in draws]
    return render(edit.source, _Replay(source_draws)), render(edit.target, _Replay(target_draws))


def instruction_words() -> set[str]:
    """The literal words of every instruction template and object reference (the fields are the world's words)."""
    templates = [t for op in INSTRUCTIONS.values() for split in op.values() for t in split]
    templates += REFERENCES + PLURAL_REFERENCES + ONE_OF_TWO_REFERENCES + SAME_AGAIN
    return set().union(*(template_words(template) for template in templates))
