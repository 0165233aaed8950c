"""The training data stream: an endless sequence of single-task micro-batches, the same task sequence on every rank.

The micro-batch at global position `p` is a pure function of `(seed, p, rank, world_size)` for map-style sources:

1. the task is `cycle[p % len(cycle)]`, the ratio's tasks spread evenly over one cycle (`mixture.Schedule`);
2. the source within the task follows the sources' weights, spread evenly over the task's micro-batches;
3. the source's micro-batch number `m` (how many of its micro-batches came before) picks this rank's slice of the
   source's seeded epoch permutations (`sample_order.EpochOrder`);
4. every random choice of sample `i` (crop, caption/edit dropout, caption prompt, refills) is drawn from a generator
   seeded by `(seed, p, rank, i)`.

So resuming at micro-batch `k` is `start=k`: nothing is replayed and nothing needs saving. A sample that cannot be
used (unreadable, too small, too long, ...) is counted in `stats` and its slot refilled with a seeded random record of
the same source; too many failures in one micro-batch raise instead of retrying forever.

Streaming sources have no random access: they are read in order (see `sources.StreamingSource`), so their
micro-batches must be built in increasing position order, and reaching position `k` first reads (and discards) the
micro-batches of that source before `k`: a resume costs one pass over the data already seen.
"""

import logging
from collections.abc import Mapping

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .collate import collate
from .examples import DENSE_CAPTION_PROMPTS, ExampleBuilder
from .mixture import Schedule, interleave, weight_quotas
from .sample_order import EpochOrder, StreamReader
from .skips import SKIP_REASONS, SkipSample
from .sources import KIND_TO_TASK, TASKS, Source, SourceSpec, StreamingSource, load_source


logger = logging.getLogger(__name__)

# Skipped samples allowed per sample of a micro-batch before the source is declared broken.
MAX_FAILURES_PER_SAMPLE = 20


class _Entry:
    """One source in the stream: its spec, its records, where its samples come from, and its cached latents."""

    def __init__(self, number: int, spec: SourceSpec, source: Source | StreamingSource, order, latents) -> None:
        self.number, self.spec, self.source, self.order, self.latents = number, spec, source, order, latents

    @property
    def name(self) -> str:
        return f"{self.spec.kind}={self.spec.format}:{self.spec.path}"


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


class MicroBatchStream(IterableDataset):
    r"""
    Endless single-task micro-batches for Harmon training (see the module docstring for how each one is chosen).

    Use it with `torch.utils.data.DataLoader(stream, batch_size=None, num_workers=...)`: worker `w` of `n` builds
    positions `start + w`, `start + w + n`, ..., which the loader returns in order. Skip counters (`stats`) and
    `position` then live in the workers' copies. With streaming sources, each worker reads its own share of the
    stream, so keep the number of workers when resuming.

    Args:
        sources: `SourceSpec`s (opened here) or `(SourceSpec, source)` pairs already opened with `load_source`.
            Sources of tasks whose ratio is 0 are ignored.
        processor: the `HarmonProcessor` of the model (chat template, tokenizer, image processor).
        model_config: the `HarmonConfig` trained.
        ratio (`dict[str, int]`): micro-batches per cycle of each task in `TASKS`, e.g. the paper's stage II
            `{"text": 1, "image2text": 3, "text2image": 8}`; missing tasks count 0.
        micro_batch_size (`dict[str, int]`): samples per micro-batch of each task with a positive ratio.
        image_size (`int`): square training image side in pixels.
        max_length (`int`): longest image-to-text or text sequence, image placeholders included.
        t2i_max_length (`int`): longest text-to-image prompt (captions are shortened to fit, never the template).
        caption_dropout (`float`): probability of the unconditional text-to-image prompt.
        min_image_side (`int`), max_aspect_ratio (`float`): image filters (see `images.check_size`).
        seed (`int`): seeds every order and random choice.
        rank (`int`), world_size (`int`): this process among the data-parallel ranks.
        start (`int`): the first position `__iter__` yields (the number of micro-batches already trained on).
        latents_cache (`LatentsCache`, *optional*): precomputed latents for text-to-image sources.
        caption_prompts (`tuple[str]`): instructions for caption samples (default: `DENSE_CAPTION_PROMPTS`).
        edit_dropout (`dict[str, float]`, *optional*): condition dropout of edit samples (see `ExampleBuilder`;
            default InstructPix2Pix's 5 % text, 5 % image, 5 % both).
        report_skips (`bool`): each batch `__iter__` yields also carries `"skipped"`, the samples skipped while
            building it by reason (nonzero ones only), so a consumer in another process can count them.
    """

    def __init__(
        self,
        sources: list,
        processor,
        model_config,
        *,
        ratio: dict[str, int],
        micro_batch_size: dict[str, int],
        image_size: int,
        max_length: int = 2048,
        t2i_max_length: int = 128,
        caption_dropout: float = 0.1,
        min_image_side: int = 8,
        max_aspect_ratio: float = 10.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        latents_cache=None,
        caption_prompts: tuple[str, ...] = DENSE_CAPTION_PROMPTS,
        report_skips: bool = False,
        edit_dropout: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}.")
        self.start = self.position = _check_int("start", start, 0)
        if not isinstance(ratio, Mapping) or set(ratio) - set(TASKS):
            raise ValueError(f"ratio must be a mapping with keys among {TASKS}, got {ratio!r}.")
        for task, count in ratio.items():
            _check_int(f"ratio[{task!r}]", count, 0)
        active = tuple(task for task in TASKS if ratio.get(task, 0) > 0)
        if not active:
            raise ValueError(f"ratio must give at least one task a positive count, got {ratio!r}.")
        if not isinstance(micro_batch_size, Mapping):
            raise ValueError(f"micro_batch_size must be a mapping from task to size, got {micro_batch_size!r}.")
        missing = [task for task in active if task not in micro_batch_size]
        if missing:
            raise ValueError(f"micro_batch_size has no size for the tasks {missing} (ratio {ratio}).")
        self.micro_batch_size = {
            task: _check_int(f"micro_batch_size[{task!r}]", micro_batch_size[task], 1) for task in active
        }

        pairs = []
        for number, item in enumerate(sources):
            spec, source = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
            if not isinstance(spec, SourceSpec) or not isinstance(source, (Source, StreamingSource, type(None))):
                raise ValueError(
                    f"sources[{number}] must be a SourceSpec or a (SourceSpec, load_source(spec)) pair, got "
                    f"{item!r:.200}."
                )
            if spec.task in active:
                pairs.append((number, spec, source))
            else:
                logger.warning(
                    "Ignoring data source %s=%s:%s: the ratio gives %s no micro-batches.",
                    spec.kind,
                    spec.format,
                    spec.path,
                    spec.task,
                )
        without = [task for task in active if task not in {spec.task for _, spec, _ in pairs}]
        if without:
            feeders = {task: [kind for kind, fed in KIND_TO_TASK.items() if fed == task] for task in without}
            raise ValueError(
                f"the ratio {ratio} needs sources for the tasks {without}, but none were given (kinds {feeders})."
            )

        self._builder = ExampleBuilder(
            processor,
            model_config,
            image_size=image_size,
            max_length=max_length,
            t2i_max_length=t2i_max_length,
            caption_dropout=caption_dropout,
            min_image_side=min_image_side,
            max_aspect_ratio=max_aspect_ratio,
            kinds=tuple({spec.kind for _, spec, _ in pairs}),
            caption_prompts=caption_prompts,
            edit_dropout=edit_dropout,
        )
        pad_token_id = processor.tokenizer.pad_token_id
        self.pad_token_id = model_config.pad_token_id if pad_token_id is None else pad_token_id
        self._entries = {task: [] for task in active}
        for number, spec, source in pairs:
            source = load_source(spec) if source is None else source
            order = (
                None
                if source.streaming
                else EpochOrder(len(source), seed, number, rank, world_size, self.micro_batch_size[spec.task])
            )
            latents = None
            if latents_cache is not None and spec.task == "text2image" and not source.streaming:
                latents = latents_cache.find(source, image_size)
            self._entries[spec.task].append(_Entry(number, spec, source, order, latents))

        counts = [(task, ratio[task]) for task in active]
        self.cycle = interleave(counts)
        self._tasks = Schedule(counts)
        self._source_schedules = {
            task: Schedule(list(enumerate(weight_quotas([entry.spec.weight for entry in entries]))))
            for task, entries in self._entries.items()
        }
        self.stats = dict.fromkeys(SKIP_REASONS, 0)
        self.report_skips = report_skips
        self._num_readers = 1  # data-loader workers sharing this rank's streaming sources
        self._readers, self._last_streamed = {}, {}

    # ------------------------------------------------------------------------------------------------ positions
    def task_at(self, position: int) -> str:
        """The task of the micro-batch at `position` (the same on every rank)."""
        return self.cycle[_check_int("position", position, 0) % len(self.cycle)]

    def source_at(self, position: int) -> SourceSpec:
        """The source of the micro-batch at `position` (the same on every rank)."""
        return self._locate(_check_int("position", position, 0))[1].spec

    def _locate(self, position: int) -> tuple[str, _Entry, int]:
        """(task, source entry, the source's micro-batch number) of the micro-batch at `position`."""
        task = self._tasks[position]
        number = self._tasks.occurrence(position)
        schedule = self._source_schedules[task]
        return task, self._entries[task][schedule[number]], schedule.occurrence(number)

    def batch_at(self, position: int) -> dict:
        """The micro-batch at global position `position` for this rank (see the module docstring).

        Returns:
            `{"task": str, "input_ids", "attention_mask", ...}` as `collate.collate` describes.
        """
        _check_int("position", position, 0)
        task, entry, micro_batch = self._locate(position)
        if entry.source.streaming:
            self._catch_up(entry, position)
        return self._build(position, task, entry, micro_batch)

    def _catch_up(self, entry: _Entry, position: int) -> None:
        """Read a streaming source up to `position`: build (and drop) its earlier micro-batches not built yet."""
        last, step = self._last_streamed.get(entry.number), self._num_readers
        if last is not None and position <= last:
            raise ValueError(
                f"position {position} was asked for after position {last}, but the streaming source {entry.name} is "
                f"read in order: build its micro-batches in increasing position order."
            )
        for earlier in range(position % step if last is None else last + step, position, step):
            task, other, micro_batch = self._locate(earlier)
            if other is entry:
                self._build(earlier, task, entry, micro_batch)

    # ------------------------------------------------------------------------------------------------ building
    def _build(self, position: int, task: str, entry: _Entry, micro_batch: int) -> dict:
        size = self.micro_batch_size[task]
        examples, failures = [], 0
        for slot in range(size):
            rng = np.random.default_rng((self.seed, position, self.rank, slot))
            attempt = 0
            while True:
                try:
                    examples.append(self._example(entry, position, micro_batch, slot, attempt, rng))
                    break
                except SkipSample as skip:
                    self.stats[skip.reason] += 1
                    failures, attempt = failures + 1, attempt + 1
                    if failures >= MAX_FAILURES_PER_SAMPLE * size:
                        raise RuntimeError(
                            f"data source {entry.name}: {failures} samples were skipped while building one "
                            f"micro-batch of {size} at position {position} (skips so far: {self.stats}); the last: "
                            f"{skip}. Check the data, the image filters (min_image_side, max_aspect_ratio) and "
                            f"max_length."
                        ) from skip
        if entry.source.streaming:
            self._last_streamed[entry.number] = position
        return collate(task, examples, self.pad_token_id)

    def _example(self, entry: _Entry, position: int, micro_batch: int, slot: int, attempt: int, rng):
        """Sample `slot` of a micro-batch; a refill (`attempt` > 0) takes a seeded random record of the source."""
        if entry.source.streaming:
            key = entry.number
            if key not in self._readers:
                reader = self.rank * self._num_readers + position % self._num_readers
                self._readers[key] = StreamReader(entry.source, reader, self.world_size * self._num_readers)
            record = entry.source.to_record(self._readers[key].next_row())
            return self._builder.build(entry.spec.kind, record, rng)
        index = entry.order.index(micro_batch, slot) if attempt == 0 else int(rng.integers(len(entry.source)))
        cached = entry.latents.load(index) if entry.latents is not None else None
        return self._builder.build(entry.spec.kind, entry.source[index], rng, cached)

    # ------------------------------------------------------------------------------------------------ iteration
    def __iter__(self):
        """Yield `batch_at(start)`, `batch_at(start + 1)`, ... (this worker's share of them); `position` is the next
        position this iterator builds."""
        info = get_worker_info()
        worker, self._num_readers = (0, 1) if info is None else (info.id, info.num_workers)
        self._readers, self._last_streamed = {}, {}
        position = self.start + worker
        while True:
            before = dict(self.stats)
            batch = self.batch_at(position)
            position += self._num_readers
            self.position = position
            if self.report_skips:
                # The consumer may be in another process (DataLoader workers), so the counts travel with the batch.
                batch["skipped"] = {
                    key: count - before[key] for key, count in self.stats.items() if count > before[key]
                }
            yield batch

    def __getstate__(self) -> dict:
        # Open stream iterators cannot be pickled (spawned workers); a copy re-reads its streams from their start.
        return {**self.__dict__, "_readers": {}, "_last_streamed": {}}
