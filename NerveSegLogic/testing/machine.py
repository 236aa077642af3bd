"""What a measurement report says about the machine it ran on: the CPU's name and whether it was idle.

Used by the benchmarks (benchmarks/speed, benchmarks/int8, benchmarks/accuracy/steady_overlay.py) to head their
reports; nothing in the live path imports it."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Iterable

#: Below this 1-minute load average (on the project's 2 cores) a run counts as taken on an otherwise idle machine.
IDLE_LOAD = 1.5


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_note(loads_before: Iterable[float]) -> str:
    """Whether the runs were measured idle, from the 1-minute load average taken before each one."""
    highest = max(loads_before, default=0.0)
    if highest < IDLE_LOAD:
        return f"otherwise idle while measured (1-minute load average below {IDLE_LOAD:g} before every run)"
    return (f"**shared with other jobs while measured** (1-minute load average up to {highest:.1f} before a run), so "
            "the figures are noisy")
