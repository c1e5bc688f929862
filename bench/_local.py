"""What the embedded-model benchmarks share: the prompts they generate for, and a timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def story_prompts(n: int) -> list[str]:
    """``n`` distinct prompts that make the model write until ``max_new_tokens``."""
    return [f"Question {i}: write a short story about the number {i} and a lighthouse." for i in range(n)]


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
