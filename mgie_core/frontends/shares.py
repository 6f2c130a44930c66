"""Splitting a run's work: fixed batches, dealt round-robin to the processes of ``accelerate launch`` (one GPU each)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


def batches(items: list[T], size: int) -> list[list[T]]:
    """Fixed boundaries, whatever is already done: batch k holds items k*size .. k*size + size - 1."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def deal(work: list[list[T]], rank: int, processes: int) -> Iterator[list[T] | None]:
    """Round after round, this process's batch (None once the others still have one): every process takes part
    in every round, as gathering the results needs."""
    for start in range(0, len(work), processes):
        yield work[start + rank] if start + rank < len(work) else None
