"""pyinstrument profiles of our produce and our drain, saved as text under bench/profiles/."""

from __future__ import annotations

from collections.abc import Callable

from pyinstrument import Profiler

from bench import REPO

PROFILES = REPO / "bench" / "profiles"


def profile(name: str, work: Callable[[], object]) -> str:
    """Run ``work`` once under pyinstrument; write its call tree to ``bench/profiles/<name>.txt``."""
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        work()
    finally:
        profiler.stop()
    PROFILES.mkdir(exist_ok=True)
    path = PROFILES / f"{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return str(path.relative_to(REPO))
