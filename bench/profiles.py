"""pyinstrument profiles of our produce and our drain, saved as text under bench/profiles/."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pyinstrument import Profiler

log = logging.getLogger(__name__)

PROFILES = Path(__file__).resolve().parent / "profiles"


def profile(name: str, work: Callable[[], object], title: str) -> Path:
    """Run ``work`` once under pyinstrument; write the call tree to ``bench/profiles/<name>.txt``."""
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        work()
    finally:
        profiler.stop()
    PROFILES.mkdir(exist_ok=True)
    path = PROFILES / f"{name}.txt"
    text = profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False)
    path.write_text(f"# {title}\n{text}")
    log.info("Wrote the profile of %s to %s", name, path)
    return path
