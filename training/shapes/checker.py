"""ShapesEval's checker: does an image show the scene its prompt asked for? No model involved, so a miss is the
generator's.

An image is read as objects: pixels at least half-way from the background colour to a palette colour are foreground
(smoothed by a 3x3 majority vote), the foreground splits into 8-connected components (specks and image-sized blobs
dropped), and each component gets a palette colour (nearest to its median RGB), a shape (from how it fills its
bounding box and how it tapers), and a position (the nearest of `world.CENTERS` to its centroid). [`check`] then
compares the objects with the scene, attribute by attribute, as GenEval does for its categories. On ground-truth
renders it is right on every scene tested, and on 99% of renders blurred (Gaussian, 1 px) under pixel noise (std 15
per channel), as a generator's might be (see tests/test_shapes.py).
"""

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import BACKGROUND, CENTERS, COLORS, IMAGE_SIZE, RELATIONS, Scene


# A pixel's coverage by palette colour c says how far it lies from the background towards c (0: background, 1: c):
# the projection of (pixel - background) on (c - background). A pixel is foreground when its largest coverage exceeds
# this, so a blurred edge is cut half-way whatever the object's colour.
FOREGROUND_COVERAGE = 0.5
# Components smaller than this (pixels) are specks, not objects: the smallest object (a 10 px triangle) has 52.
MIN_AREA = 16
# Components wider or taller than this (pixels) are not objects either (objects are 10-12 px across): a background of
# the wrong colour, or noise, which would otherwise pass for a big centred square.
MAX_EXTENT = 24
# A component is a palette-coloured object only if its median RGB lies within this distance of its palette colour
# (palette colours are 71 or more apart; a mid-grey is 96 from purple, its nearest) and at least MIN_COLOR_AGREEMENT of
# its pixels are nearest to that colour: grey, noise and mixtures of colours get no colour.
MAX_COLOR_DISTANCE = 60.0
MIN_COLOR_AGREEMENT = 0.5
# Shapes by fill of the bounding box and taper (width of the top quarter of rows over the bottom quarter). Measured on
# renders after the majority filter of `_foreground` (which trims square corners and triangle tips): fill 0.96-0.97
# for squares, 0.76-0.80 for circles, 0.62-0.64 for triangles; taper 1.0 for squares and circles, 0.24-0.29 for the
# apex-up triangles. Thresholds lie half-way between the classes.
TRIANGLE_MAX_TAPER = 0.6
TRIANGLE_MAX_FILL = 0.70
SQUARE_MIN_FILL = 0.88
# The attributes `check` judges; `None` where one does not apply to the scene's kind.
ATTRIBUTES = ("color", "shape", "position", "count", "color_attr")

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[name] for name in _PALETTE_NAMES], dtype=np.float64)
_BACKGROUND = np.array(BACKGROUND, dtype=np.float64)


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image: `color` is a `world.COLORS` name (None: not one palette colour), `shape` a
    `world.SHAPES` name, `position` the nearest `world.CENTERS` name, `centroid` (x, y) in pixels of the 32 px image,
    `area` in pixels."""

    color: str | None
    shape: str
    position: str
    centroid: tuple[float, float]
    area: int


def _as_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """(32, 32, 3) float RGB in [0, 255]; other sizes are area-resized to 32 px first."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an (H, W, 3) uint8 array, got shape {image.shape} of {image.dtype}.")
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def _foreground(pixels: np.ndarray) -> np.ndarray:
    """Boolean (32, 32) mask of the pixels covered by some palette colour (see FOREGROUND_COVERAGE), smoothed by a 3x3
    majority vote so that noise makes neither specks nor jagged outlines."""
    directions = _PALETTE - _BACKGROUND
    coverage = (pixels - _BACKGROUND) @ directions.T / (directions**2).sum(axis=1)
    covered = np.pad(coverage.max(axis=-1) > FOREGROUND_COVERAGE, 1)
    height, width = pixels.shape[:2]
    votes = sum(covered[dy : dy + height, dx : dx + width].astype(int) for dy in range(3) for dx in range(3))
    return votes >= 5


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of the boolean `mask`, as boolean masks: every pixel takes the smallest label
    in its 3x3 neighbourhood until no label changes (at most the longest path through a component)."""
    height, width = mask.shape
    unlabelled = height * width
    labels = np.where(mask, np.arange(height * width).reshape(height, width), unlabelled)
    while True:
        padded = np.pad(labels, 1, constant_values=unlabelled)
        windows = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        updated = np.where(mask, np.min(windows, axis=0), unlabelled)
        if np.array_equal(updated, labels):
            return [labels == label for label in np.unique(labels[mask])]
        labels = updated


def _color(pixels: np.ndarray) -> str | None:
    """Palette name of (N, 3) pixels: the nearest to their median, if close and agreed on (see MAX_COLOR_DISTANCE)."""
    nearest = np.linalg.norm(pixels[:, None, :] - _PALETTE[None], axis=-1).argmin(axis=1)
    distances = np.linalg.norm(np.median(pixels, axis=0) - _PALETTE, axis=-1)
    index = distances.argmin()
    if distances[index] > MAX_COLOR_DISTANCE or np.mean(nearest == index) < MIN_COLOR_AGREEMENT:
        return None
    return _PALETTE_NAMES[index]


def _shape(component: np.ndarray) -> str:
    """`world.SHAPES` name of a boolean component mask (see the thresholds above)."""
    rows, columns = np.nonzero(component)
    box = component[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    fill = box.mean()
    widths = box.sum(axis=1)
    quarter = max(1, len(widths) // 4)
    taper = widths[:quarter].mean() / widths[-quarter:].mean()
    if taper < TRIANGLE_MAX_TAPER or fill < TRIANGLE_MAX_FILL:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _nearest_position(centroid: tuple[float, float]) -> str:
    return min(CENTERS, key=lambda name: np.hypot(centroid[0] - CENTERS[name][0], centroid[1] - CENTERS[name][1]))


def detect(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    """The objects in `image` (a PIL image or an (H, W, 3) uint8 array; 32 px, or resized to it), largest first."""
    pixels = _as_pixels(image)
    objects = []
    for component in _components(_foreground(pixels)):
        area = int(component.sum())
        rows, columns = np.nonzero(component)
        if area < MIN_AREA or max(np.ptp(rows), np.ptp(columns)) + 1 > MAX_EXTENT:
            continue
        # Pixel i covers [i, i + 1), so its centre is at i + 0.5 in the coordinates of `world.CENTERS`.
        centroid = (float(columns.mean()) + 0.5, float(rows.mean()) + 0.5)
        objects.append(
            DetectedObject(_color(pixels[component]), _shape(component), _nearest_position(centroid), centroid, area)
        )
    return sorted(objects, key=lambda obj: -obj.area)


def _relation_holds(relation: str, first: DetectedObject, second: DetectedObject) -> bool:
    """Whether `first` is `relation` `second`: offset mostly along the relation's axis, in its direction (e.g.
    "above": the first centroid higher, by more than it is off sideways)."""
    first_position, second_position = next((p1, p2) for phrase, p1, p2 in RELATIONS if phrase == relation)
    direction = np.subtract(CENTERS[first_position], CENTERS[second_position])
    direction = direction / np.linalg.norm(direction)
    offset = np.subtract(first.centroid, second.centroid)
    along = float(offset @ direction)
    across = abs(float(offset[0] * direction[1] - offset[1] * direction[0]))
    return along > across


def _match(scene: Scene, objects: list[DetectedObject]) -> tuple[DetectedObject, DetectedObject] | None:
    """The two distinct detected objects that stand for a `two` scene's objects, in the scene's order: the pair that
    agrees with them on the most colours and shapes, more shapes first on a tie (GenEval finds objects by class),
    then the larger objects. None with fewer than two objects. Matching on both attributes keeps `position` about
    where things are: a circle drawn for a square is a `shape` miss, not also a `position` one."""
    first, second = scene.objects

    def agreement(pair: tuple[DetectedObject, DetectedObject]) -> tuple[int, int]:
        shapes = (pair[0].shape == first.shape) + (pair[1].shape == second.shape)
        return shapes + (pair[0].color == first.color) + (pair[1].color == second.color), shapes

    # `objects` is sorted largest first, and max() keeps the first of equal pairs.
    return max(itertools.permutations(objects, 2), key=agreement, default=None)


def check(scene: Scene, image: Image.Image | np.ndarray) -> dict[str, bool | None]:
    """Per-attribute correctness of `image` as a drawing of `scene` (what its caption asked for).

    Returns `{"color", "shape", "position", "count", "color_attr", "overall"}`, each True/False, or None where the
    attribute does not apply to the scene's kind:
    - `single` ("a red circle on the left"): exactly one object (`count`); the largest object's `color`, `shape` and
      `position` (nearest of `world.CENTERS`).
    - `two` ("a blue square above a green triangle"): exactly two objects (`count`); both shapes present (`shape`);
      both colours present (`color`); each colour on its shape (`color_attr`); the relation holds between the two
      objects that agree best with the wanted ones (`position`, see `_match`). With every other attribute right
      these are the wanted objects, so `overall` is GenEval's position check.
    - `count` ("two yellow circles"): exactly two objects (`count`), every object of the colour (`color`) and the
      shape (`shape`), at least one object.
    `overall` is True when every attribute that applies is.
    """
    objects = detect(image)
    result: dict[str, bool | None] = dict.fromkeys(ATTRIBUTES)
    if scene.kind == "single":
        wanted = scene.objects[0]
        main = objects[0] if objects else None
        result.update(
            count=len(objects) == 1,
            color=main is not None and main.color == wanted.color,
            shape=main is not None and main.shape == wanted.shape,
            position=main is not None and main.position == wanted.position,
        )
    elif scene.kind == "count":
        wanted = scene.objects[0]
        result.update(
            count=len(objects) == len(scene.objects),
            color=bool(objects) and all(obj.color == wanted.color for obj in objects),
            shape=bool(objects) and all(obj.shape == wanted.shape for obj in objects),
        )
    elif scene.kind == "two":
        found = {(obj.color, obj.shape) for obj in objects}
        pair = _match(scene, objects)
        result.update(
            count=len(objects) == len(scene.objects),
            color=all(obj.color in {color for color, _ in found} for obj in scene.objects),
            shape=all(obj.shape in {shape for _, shape in found} for obj in scene.objects),
            color_attr=all((obj.color, obj.shape) in found for obj in scene.objects),
            position=pair is not None and _relation_holds(scene.relation, *pair),
        )
    else:
        raise ValueError(f"scene.kind must be single, two or count, got {scene.kind!r}.")
    result["overall"] = all(value for value in result.values() if value is not None)
    return result
