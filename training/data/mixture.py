"""The data mixture as arithmetic on micro-batch positions: which task, which source, and how many came before.

A [`Schedule`] repeats a fixed period in which every key appears its count of times, spread evenly. Tasks follow one
(the paper's `text : image2text : text2image` ratio, e.g. 1 : 3 : 8) and the sources of a task follow another (their
weights as integer quotas). Both answer "what is slot n, and how many slots of the same key precede it" in O(1), so
the micro-batch at any position can be built without replaying the ones before it: exact resume needs no state.
"""

import math
from collections.abc import Hashable, Sequence


def interleave(counts: Sequence[tuple[Hashable, int]]) -> list[Hashable]:
    """One period of keys with `counts` occurrences each, spread evenly: the j-th of k occurrences sits at
    (j + 1/2) / k of the period, ties in the given order. E.g. `[("a", 1), ("b", 3)]` -> `["b", "a", "b", "b"]`."""
    slots = [((j + 0.5) / count, order, key) for order, (key, count) in enumerate(counts) for j in range(count)]
    return [key for _, _, key in sorted(slots, key=lambda slot: slot[:2])]


def weight_quotas(weights: Sequence[float], resolution: int = 1000) -> list[int]:
    """Small integer counts in the proportions of `weights` (to 1 / `resolution` of the total, each at least 1)."""
    total = sum(weights)
    quotas = [max(1, round(resolution * weight / total)) for weight in weights]
    divisor = math.gcd(*quotas)
    return [quota // divisor for quota in quotas]


class Schedule:
    """An endless sequence of keys repeating `interleave(counts)`.

    Args:
        counts: `(key, count)` pairs; keys with count 0 never appear.
    """

    def __init__(self, counts: Sequence[tuple[Hashable, int]]) -> None:
        counts = [(key, count) for key, count in counts if count > 0]
        if not counts:
            raise ValueError("a schedule needs at least one key with a positive count.")
        self.counts = dict(counts)
        self.period = interleave(counts)
        seen = dict.fromkeys(self.counts, 0)
        self._rank = []  # occurrences of the same key earlier in the period
        for key in self.period:
            self._rank.append(seen[key])
            seen[key] += 1

    def __getitem__(self, n: int) -> Hashable:
        return self.period[n % len(self.period)]

    def occurrence(self, n: int) -> int:
        """How many of the slots 0 .. n-1 hold the key of slot n (so each key's slots are numbered 0, 1, 2, ...)."""
        cycles, offset = divmod(n, len(self.period))
        return cycles * self.counts[self.period[offset]] + self._rank[offset]
