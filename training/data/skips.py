"""Why a training sample is skipped: the one exception that data code raises for bad samples, and its reasons.

Real data sets hold a few broken records (missing or corrupt images, thumbnails, panoramas, conversations too long for
the context). The stream skips such a sample, counts it under its reason and refills the slot, instead of crashing
a long run or, like the reference, retrying forever.
"""

UNREADABLE_IMAGE = "unreadable_image"
TOO_SMALL = "too_small"
BAD_ASPECT = "bad_aspect"
TOO_LONG = "too_long"
BAD_RECORD = "bad_record"
SKIP_REASONS = (UNREADABLE_IMAGE, TOO_SMALL, BAD_ASPECT, TOO_LONG, BAD_RECORD)


class SkipSample(Exception):
    """A sample that cannot be used; `reason` is one of `SKIP_REASONS`, the message says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"reason must be one of {SKIP_REASONS}, got {reason!r}.")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
