"""Which records a source's micro-batches take on each rank: seeded epoch permutations, or sequential stream reads."""

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np


class EpochOrder:
    """Sample order of a map-style source.

    Every epoch is a permutation of the source seeded by `(seed, source_number, epoch)`, the same on every rank. The
    source's micro-batch `m` on rank `r` takes the `batch_size` entries starting at `(m * world_size + r) * batch_size`
    of the endless concatenation of epochs: ranks take disjoint slices of the same micro-batch index, together they
    read each epoch once, and any entry is found without reading the ones before.
    """

    def __init__(
        self, length: int, seed: int, source_number: int, rank: int, world_size: int, batch_size: int
    ) -> None:
        self.length, self.seed, self.source_number = length, seed, source_number
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self._permutations = OrderedDict()  # the last two epochs: a micro-batch may straddle their boundary

    def index(self, micro_batch: int, slot: int) -> int:
        """The record of `slot` in the source's micro-batch number `micro_batch` on this rank."""
        offset = (micro_batch * self.world_size + self.rank) * self.batch_size + slot
        epoch, within = divmod(offset, self.length)
        return int(self._permutation(epoch)[within])

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            rng = np.random.default_rng((self.seed, self.source_number, epoch))
            self._permutations[epoch] = rng.permutation(self.length)
            if len(self._permutations) > 2:
                self._permutations.popitem(last=False)
        return self._permutations[epoch]


_END = object()


class StreamReader:
    """Sequential reads of a streaming source by reader `reader` of `num_readers`, pass after pass."""

    def __init__(self, source, reader: int, num_readers: int) -> None:
        self.source, self.reader, self.num_readers = source, reader, num_readers
        self._rows = None

    def next_row(self) -> Mapping:
        """The reader's next raw row; at the end of a pass the stream starts over."""
        if self._rows is not None:
            row = next(self._rows, _END)
            if row is not _END:
                return row
        self._rows = self.source.rows(self.reader, self.num_readers)
        row = next(self._rows, _END)
        if row is _END:
            raise RuntimeError(
                f"streaming source {self.source.spec.path} has no rows for reader {self.reader} of "
                f"{self.num_readers} (ranks x data-loader workers): it holds fewer rows than readers."
            )
        return row
