"""Training data for Harmon: sources, examples, the mixed micro-batch stream and a latents cache.

`SourceSpec` names a source (`SourceSpec.parse("t2i=jsonl:captions.jsonl?weight=2")`), `load_source` opens it, and
`MicroBatchStream` turns a list of them into endless single-task micro-batches in the paper's task ratio, the same
task sequence on every rank, resumable at any position.
"""

from .collate import collate
from .examples import DENSE_CAPTION_PROMPTS, Example, ExampleBuilder
from .latents_cache import CachedLatents, LatentsCache, cache_text_to_image_latents
from .mixture import Schedule, interleave, weight_quotas
from .skips import SKIP_REASONS, SkipSample
from .sources import FORMATS, KIND_TO_TASK, TASKS, Source, SourceSpec, StreamingSource, load_source
from .stream import MicroBatchStream


__all__ = [
    "DENSE_CAPTION_PROMPTS",
    "FORMATS",
    "KIND_TO_TASK",
    "SKIP_REASONS",
    "TASKS",
    "CachedLatents",
    "Example",
    "ExampleBuilder",
    "LatentsCache",
    "MicroBatchStream",
    "Schedule",
    "SkipSample",
    "Source",
    "SourceSpec",
    "StreamingSource",
    "cache_text_to_image_latents",
    "collate",
    "interleave",
    "load_source",
    "weight_quotas",
]
