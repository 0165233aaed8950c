"""Free phrasing for the Shapes world (issue 25): several wordings of each caption and question, a held-out set of
wordings never trained on, and the check that a prompt's words are in a tokenizer's vocabulary.

Users type free text: "a blue square on the right and a green triangle on the left" rather than the one wording the
demo model was trained on. Every scene kind and question type here has TRAIN phrasings (the canonical one of
world.py among them, named "canonical", so ShapesEval's prompts stay what they were) and HELD_OUT phrasings: new
sentence structures built only from words the train phrasings use, so a score on them measures whether a model
generalises over wording, not whether it knows a word (tests/test_shapes_edits.py checks the words).

    name, text = phrase_caption(scene, rng)                      # a train phrasing, the canonical one half the time
    caption_phrasings(scene, "held_out")                         # {name: text} of the held-out ones
    phrase_question("what color is the circle?", rng)             # a rewording of one of world.questions()'s
    unknown_words("make the circle blue", tokenizer)              # ["make"] for the shipped demo tokenizer
"""

import re
import string
import sys

from .world import COLORS, NUMBER_WORDS, POSITIONS, RELATIONS, SHAPES, Scene, _article, _position_phrase, vocabulary


CANONICAL = "canonical"
SPLITS = ("train", "held_out")
# Share of make_data's free-phrasing records that keep the canonical wording (ShapesEval prompts with it).
CANONICAL_SHARE = 0.5

# Another wording of each position ("on the left side", "in the middle").
ALT_WHERE = {
    "left": "on the left side",
    "right": "on the right side",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the middle",
}
INVERSE_RELATION = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below"}
INVERSE_RELATION["below"] = "above"

# (name, template, condition) per scene kind and split. Conditions (two-object scenes): "horizontal" (left/right
# relations), "above", "below"; None applies to every scene of the kind. Fields: see `_caption_fields`.
CAPTIONS = {
    "single": {
        "train": (
            (CANONICAL, "{A} {where}", None),
            ("alt_position", "{A} {alt_where}", None),
            ("there_is", "there is {A} {where}", None),
            ("that_is", "{s_a} that is {c}, {where}", None),
            ("one", "one {c} {s} {where}", None),
            ("position_first", "{where}, {A}", None),
        ),
        "held_out": (
            ("there_is_that_is", "there is {s_a} that is {c} {where}", None),
            ("position_there_is", "{alt_where} there is one {c} {s}", None),
        ),
    },
    "two": {
        "train": (
            (CANONICAL, "{A} {rel} {B}", None),
            ("inverse", "{B} {inv} {A}", None),
            ("and_positions", "{A} {whereA} and {B} {whereB}", None),
            ("next_to", "{A} next to {B}, the {sA} {whereA}", "horizontal"),
            ("on_top_of", "{A} on top of {B}", "above"),
            ("under", "{A} under {B}", "below"),
            ("is_relation", "the {cA} {sA} is {rel} the {cB} {sB}", None),
            ("that_is", "{sA_a} that is {cA} {rel} {sB_a} that is {cB}", None),
            ("two_shapes", "two shapes: {A} {whereA} and {B} {whereB}", None),
            ("with_it", "{A} with {B} {inv} it", None),
        ),
        "held_out": (
            ("positions_first", "{whereA} {A} and {whereB} {B}", None),
            ("pair_then_relation", "{B} and {A}, the {sA} {rel} the {sB}", None),
        ),
    },
    "count": {
        "train": (
            (CANONICAL, "two {c} {s}s", None),
            ("pair", "a pair of {c} {s}s", None),
            ("that_are", "two {s}s that are {c}", None),
            ("one_and_one", "two {c} {s}s, one {where1} and one {where2}", None),
            ("another", "{A} and another {c} {s}", None),
            ("ordinal", "the first {c} {s} {where1} and the second {where2}", None),
            ("both", "two {s}s, both {c}", None),
        ),
        "held_out": (
            ("another_positions", "{A} {where1} and another {where2}", None),
            ("pair_that_are", "a pair of {s}s that are {c}", None),
        ),
    },
}

# Question types of world.questions(), each as (regex of its canonical wording, train templates, held-out templates);
# the regex's named groups are the template fields ("s_a" is added: "a circle").
QUESTIONS = {
    "count": (
        r"how many shapes are there\?",
        (
            "how many objects are there?",
            "how many shapes are in the image?",
            "how many shapes can you see?",
        ),
        ("in the image, how many shapes are there?", "how many objects can you see?"),
    ),
    "color_of": (
        r"what color is the (?P<s>\w+)\?",
        ("what is the color of the {s}?", "which color is the {s}?", "what color does the {s} have?"),
        ("which color does the {s} have?", "the {s} is which color?"),
    ),
    "shape_at": (
        r"what shape is (?P<where>on the \w+|in the center)\?",
        ("which shape is {where}?", "what is the shape {where}?", "what kind of shape is {where}?"),
        ("which kind of shape is {where}?", "{where}, which shape is there?"),
    ),
    "where": (
        r"where is the (?P<c>\w+) (?P<s>\w+)\?",
        (
            "where can you see the {c} {s}?",
            "in which part of the image is the {c} {s}?",
            "where in the image is the {c} {s}?",
        ),
        ("where is the {s} that is {c}?", "in which part of the image can you see the {c} {s}?"),
    ),
    "color_plural": (
        r"what color are the (?P<s>\w+)s\?",
        ("what is the color of the {s}s?", "which color are the {s}s?", "what color do the {s}s have?"),
        ("which color do the {s}s have?",),
    ),
    "shape_plural": (
        r"what shape are the (?P<c>\w+) objects\?",
        (
            "what shape do the {c} objects have?",
            "which shape are the {c} objects?",
            "what kind of shape are the {c} objects?",
        ),
        ("which kind of shape do the {c} objects have?",),
    ),
    "exists": (
        r"is there (?P<a>an?) (?P<c>\w+) (?P<s>\w+)\?",
        (
            "do you see {a} {c} {s}?",
            "can you see {a} {c} {s}?",
            "does the image show {a} {c} {s}?",
            "is there {s_a} that is {c}?",
        ),
        ("is {a} {c} {s} in the image?", "does the image show {s_a} that is {c}?"),
    ),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}.")


def _with_article(*words: str) -> str:
    return f"{_article(words[0])} {' '.join(words)}"


def _caption_fields(scene: Scene) -> dict:
    first = scene.objects[0]
    fields = {
        "c": first.color,
        "s": first.shape,
        "A": _with_article(first.color, first.shape),
        "s_a": _with_article(first.shape),
        "where": _position_phrase(first.position),
        "alt_where": ALT_WHERE[first.position],
    }
    if scene.kind == "count":
        fields.update(where1=_position_phrase(first.position), where2=_position_phrase(scene.objects[1].position))
    if scene.kind == "two":
        second = scene.objects[1]
        fields.update(
            cA=first.color,
            sA=first.shape,
            cB=second.color,
            sB=second.shape,
            B=_with_article(second.color, second.shape),
            sA_a=_with_article(first.shape),
            sB_a=_with_article(second.shape),
            rel=scene.relation,
            inv=INVERSE_RELATION[scene.relation],
            whereA=_position_phrase(first.position),
            whereB=_position_phrase(second.position),
        )
    return fields


def _applies(condition: str | None, scene: Scene) -> bool:
    if condition is None:
        return True
    if condition == "horizontal":
        return scene.relation in ("to the left of", "to the right of")
    return scene.relation == condition


def caption_phrasings(scene: Scene, split: str = "train") -> dict[str, str]:
    """{name: caption} of every phrasing of `split` that applies to `scene`; the train ones include "canonical",
    which is `scene.caption()`."""
    _check_split(split)
    fields = _caption_fields(scene)
    return {
        name: template.format(**fields)
        for name, template, condition in CAPTIONS[scene.kind][split]
        if _applies(condition, scene)
    }


def _pick(phrasings: dict[str, str], rng, split: str, canonical_share: float) -> tuple[str, str]:
    """A phrasing: in the train split the canonical one with probability `canonical_share`, else one of the others."""
    if split == "train" and CANONICAL in phrasings and rng.random() < canonical_share:
        return CANONICAL, phrasings[CANONICAL]
    names = [name for name in phrasings if name != CANONICAL] or list(phrasings)
    name = rng.choice(names)
    return name, phrasings[name]


def phrase_caption(scene: Scene, rng, split: str = "train", canonical_share: float = CANONICAL_SHARE):
    """(phrasing name, caption) of `scene`: held out, or train with the canonical wording `canonical_share` of the
    time (the rest spread over the other train phrasings)."""
    return _pick(caption_phrasings(scene, split), rng, split, canonical_share)


def question_type(question: str) -> tuple[str, dict]:
    """(QUESTIONS key, fields) of a canonical question of `world.questions`; ValueError for any other wording."""
    for name, (pattern, _, _) in QUESTIONS.items():
        match = re.fullmatch(pattern, question)
        if match:
            fields = match.groupdict()
            if "s" in fields:
                fields["s_a"] = _with_article(fields["s"])
            return name, fields
    raise ValueError(f"{question!r} is not a canonical question of world.questions().")


def question_phrasings(question: str, split: str = "train") -> dict[str, str]:
    """{name: question} of the `split` rewordings of a canonical `question`; the train ones include it as
    "canonical". Names are "<type>_<split>_<index>"."""
    _check_split(split)
    kind, fields = question_type(question)
    _, train, held_out = QUESTIONS[kind]
    templates = train if split == "train" else held_out
    found = {CANONICAL: question} if split == "train" else {}
    found.update({f"{kind}_{split}_{index}": template.format(**fields) for index, template in enumerate(templates)})
    return found


def phrase_question(question: str, rng, split: str = "train", canonical_share: float = CANONICAL_SHARE):
    """(phrasing name, question): a rewording of the canonical `question` as [`phrase_caption`] picks captions."""
    return _pick(question_phrasings(question, split), rng, split, canonical_share)


# ---------------------------------------------------------------------------------------------- vocabulary
def words(text: str) -> list[str]:
    """`text` split as the Shapes tokenizer splits it: lower-cased, on whitespace, punctuation apart."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def template_words(template: str) -> set[str]:
    """The literal words of a template (its fields, and the plural "s" after a field, left out)."""
    return set(words(re.sub(r"\{\w+\}s?", " ", template)))


def added_words() -> list[str]:
    """The words of every phrasing here and every edit instruction (edits.py) that `world.vocabulary()` lacks,
    sorted: `world.extended_vocabulary()` appends them."""
    from .edits import instruction_words  # edits builds on this module's helpers

    found = set()
    for kind in CAPTIONS.values():
        for split in kind.values():
            found.update(word for _, template, _ in split for word in template_words(template))
    for _, train, held_out in QUESTIONS.values():
        found.update(word for template in train + held_out for word in template_words(template))
    fillers = " ".join([*ALT_WHERE.values(), *INVERSE_RELATION, *NUMBER_WORDS.values(), *POSITIONS])
    relations = " ".join(phrase for phrase, _, _ in RELATIONS)
    found |= set(words(f"{fillers} {relations}")) | set(COLORS) | set(SHAPES) | {f"{shape}s" for shape in SHAPES}
    found |= instruction_words()
    return sorted(found - set(vocabulary()))


# --------------------------------------------------------------------------------------------- unknown words
def unknown_words(text: str, tokenizer) -> list[str]:
    """The words of `text` that `tokenizer` encodes with its unknown token, in order, once each (surrounding
    punctuation stripped), so a user can be told why a small word-level model ignores part of a prompt.

    Generic: any tokenizer with an `unk_token_id` and `encode(text, add_special_tokens=False)`; a tokenizer without
    an unknown token (byte-level BPE) has no unknown words. A whitespace-separated piece counts as unknown when any
    of its tokens is the unknown one."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    found = []
    for piece in text.split():
        if unk in tokenizer.encode(piece, add_special_tokens=False):
            word = piece.strip(string.punctuation) or piece
            if word not in found:
                found.append(word)
    return found


def unknown_words_message(text: str, tokenizer) -> str | None:
    """One line naming `text`'s unknown words (see [`unknown_words`]), or None when there are none."""
    found = unknown_words(text, tokenizer)
    if not found:
        return None
    named = ", ".join(repr(word) for word in found)
    return (
        f"unknown words {named}: not in the model's vocabulary, so it reads each as {tokenizer.unk_token}; "
        "the result may ignore them"
    )


def warn_unknown_words(prog: str, text: str, tokenizer) -> None:
    """Print `prog: warning: unknown words ...` on stderr when `text` has words outside `tokenizer`'s vocabulary."""
    message = unknown_words_message(text, tokenizer)
    if message is not None:
        print(f"{prog}: warning: {message}", file=sys.stderr)
