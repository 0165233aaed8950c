"""Precomputed VAE latents of text-to-image sources, so the frozen VAE encodes each image once instead of every epoch.

Random crops cannot be cached: a cached sample is the centre square crop resized to `image_size`. The stream uses a
cache for a source only when it covers every record of that source, unchanged, at the training `image_size`; then
every micro-batch of that source carries `latents` instead of `pixel_values`. One source's cache is a folder:

    index.json                               the source key and fingerprint, image size, shard list (written last)
    shard-000000000-000004096.safetensors    "latents" (n, rows, cols, D), "indices" (n,), "sizes" (n, 2) as
                                             (width, height) for the stream's size filters, and metadata
                                             "skipped" ({index: reason}) for unreadable images

Shards and the index are written atomically: an interrupted run resumes at the first missing shard.
"""

import json
import logging
import math
import os
from bisect import bisect_right
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modeling_harmon.atomic_files import atomic_path, write_json

from .images import read_image, square_crop
from .skips import SkipSample
from .sources import Source, SourceSpec, load_source


logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
OPEN_SHARDS = 64  # shard handles kept open per process; samples are drawn from all shards at random


def _describe(source: Source) -> dict:
    """What a cache must match to stand in for `source` (and a shard to be reused by a resumed run)."""
    return {
        "version": FORMAT_VERSION,
        "source": source.key,
        "fingerprint": source.fingerprint,
        "num_records": len(source),
    }


def cache_text_to_image_latents(
    model,
    source: SourceSpec | Source,
    out_dir: str | os.PathLike,
    image_size: int,
    batch_size: int = 32,
    records_per_shard: int = 4096,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Encode every image of a text-to-image source (centre square crop at `image_size`) with `model`'s VAE.

    Args:
        model: a `HarmonForConditionalGeneration` (or `HarmonModel`) on the device to encode on.
        source: the `t2i` source, as a spec or opened; streaming sources have no record indices and cannot be cached.
        out_dir: the cache folder (created; a finished cache of the same source and size is left as it is).
        image_size: square side in pixels, as trained.
        batch_size: images per VAE call.
        records_per_shard: records per shard file (the unit of resumption).
        dtype: storage dtype of the latents (the stream returns float32).

    Returns:
        `out_dir` as a `Path`.
    """
    source = load_source(source) if isinstance(source, SourceSpec) else source
    if not isinstance(source, Source):
        raise ValueError(f"source must be a map-style t2i source (not streaming), got {type(source).__name__}.")
    if source.spec.task != "text2image":
        raise ValueError(f"source must be a t2i source, got kind {source.spec.kind!r}.")
    encoder = getattr(model, "model", model)
    stride = encoder.config.vae_stride * encoder.config.patch_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % stride:
        raise ValueError(
            f"image_size must be a positive multiple of the model's token stride ({stride}), got {image_size!r}."
        )
    for name, value in (("batch_size", batch_size), ("records_per_shard", records_per_shard)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **_describe(source),
        "image_size": image_size,
        "crop": "center",
        "dtype": str(dtype).removeprefix("torch."),
    }
    index_path = out / INDEX_FILE
    if index_path.is_file():
        if {key: value for key, value in json.loads(index_path.read_text()).items() if key != "shards"} == meta:
            return out
        index_path.unlink()  # an index must never list shards of another version while they are rewritten
    shards = []
    for start in range(0, len(source), records_per_shard):
        stop = min(len(source), start + records_per_shard)
        path = out / f"shard-{start:09d}-{stop:09d}.safetensors"
        if not _shard_matches(path, meta):
            _write_shard(encoder, source, range(start, stop), path, meta, image_size, batch_size, dtype)
            logger.info("Cached the latents of records %d-%d of %d (%s).", start, stop, len(source), source.spec.path)
        shards.append({"file": path.name, "start": start, "stop": stop})
    names = {shard["file"] for shard in shards}
    for stale in out.glob("shard-*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    write_json({**meta, "shards": shards}, index_path)
    return out


def _shard_matches(path: Path, meta: dict) -> bool:
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("meta") == json.dumps(meta, sort_keys=True)


def _write_shard(
    encoder, source: Source, indices: range, path: Path, meta: dict, image_size: int, batch_size: int, dtype
) -> None:
    parameter = next(encoder.vae.parameters())
    side = image_size // (encoder.config.vae_stride * encoder.config.patch_size)
    latents = [torch.zeros((0, side, side, encoder.config.token_dim), dtype=dtype)]
    kept, sizes, skipped = [], [], {}
    for first in range(indices.start, indices.stop, batch_size):
        pixels = []
        for index in range(first, min(indices.stop, first + batch_size)):
            try:
                image = read_image(source[index]["image"], min_side=1, max_aspect_ratio=math.inf)
            except SkipSample as skip:
                skipped[index] = skip.reason
                continue
            pixels.append(square_crop(image, image_size, None))
            kept.append(index)
            sizes.append(image.size)
        if pixels:
            tokens = encoder.encode_images(torch.stack(pixels).to(device=parameter.device, dtype=parameter.dtype))
            latents.append(tokens.to("cpu", dtype))
    tensors = {
        "latents": torch.cat(latents).contiguous(),
        "indices": torch.tensor(kept, dtype=torch.long),
        "sizes": torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
    }
    metadata = {"meta": json.dumps(meta, sort_keys=True), "skipped": json.dumps(skipped)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


class CachedLatents:
    """The latents of one cached source, by record index."""

    def __init__(self, folder: Path, index: dict) -> None:
        self.folder, self.shards = folder, index["shards"]
        self._starts = [shard["start"] for shard in self.shards]
        self._open = OrderedDict()

    def load(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """`(latents (rows, cols, D) float32, (width, height) of the original image)` of record `index`.

        Raises `SkipSample` with the recorded reason for an image that could not be read when caching.
        """
        handle, indices, sizes, skipped = self._shard(bisect_right(self._starts, index) - 1)
        if index in skipped:
            raise SkipSample(skipped[index], f"record {index} was skipped when caching latents in {self.folder}.")
        row = int(np.searchsorted(indices, index))
        latents = handle.get_slice("latents")[row : row + 1][0].float()
        return latents, (int(sizes[row, 0]), int(sizes[row, 1]))

    def _shard(self, number: int):
        if number in self._open:
            self._open.move_to_end(number)
        else:
            handle = safe_open(str(self.folder / self.shards[number]["file"]), framework="pt")
            skipped = {int(key): reason for key, reason in json.loads(handle.metadata()["skipped"]).items()}
            indices, sizes = handle.get_tensor("indices").numpy(), handle.get_tensor("sizes").numpy()
            self._open[number] = (handle, indices, sizes, skipped)
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        return self._open[number]

    def __getstate__(self) -> dict:
        # Open file handles do not cross process boundaries (data-loader workers); each process reopens its own.
        return {**self.__dict__, "_open": OrderedDict()}


class LatentsCache:
    """Finished latents caches ([`cache_text_to_image_latents`] folders), looked up by source and image size.

    Args:
        folders: one cache folder or a list of them (one per source and size).
    """

    def __init__(self, folders: str | os.PathLike | list) -> None:
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        self._indexes = []
        for folder in map(Path, folders):
            path = folder / INDEX_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{folder} is not a finished latents cache: it has no {INDEX_FILE} (written when caching ends)."
                )
            self._indexes.append((folder, json.loads(path.read_text())))

    def find(self, source: Source, image_size: int) -> CachedLatents | None:
        """The cache of `source` at `image_size`, or None; a cache of an older version of the source is ignored."""
        wanted = _describe(source)
        for folder, index in self._indexes:
            if index.get("source") != source.key or index.get("image_size") != image_size:
                continue
            if {key: index.get(key) for key in wanted} == wanted:
                return CachedLatents(folder, index)
            logger.warning("Ignoring the latents cache %s: its source %s has changed.", folder, source.spec.path)
        return None
