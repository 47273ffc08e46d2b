"""Metadata: the free key-value pairs a client keeps on its objects, within Stripe's limits."""

from __future__ import annotations

from collections.abc import Mapping

# Stripe's limits, so that our metadata can always be written to its objects too.
MAX_KEYS = 50
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500


class MetadataTooLarge(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def merge(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """Stripe's update semantics: keys are merged, and an empty value deletes its key. The
    result is checked whole: a request within the limits may still take the merged
    metadata beyond them."""
    merged = {key: value for key, value in {**current, **changes}.items() if value != ""}
    check(merged)
    return merged


def check(metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_KEYS:
        raise MetadataTooLarge(
            f"metadata may hold at most {MAX_KEYS} keys; this would make {len(metadata)}",
            "metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_KEY_LENGTH:
            raise MetadataTooLarge(
                f"metadata keys are at most {MAX_KEY_LENGTH} characters", f"metadata.{key}"
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise MetadataTooLarge(
                f"metadata values are at most {MAX_VALUE_LENGTH} characters", f"metadata.{key}"
            )
