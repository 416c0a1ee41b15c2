"""The benchmark harness behind ``make bench``: every contender on one broker, one Mongo-wire
server and the same data, in one run, alternating contenders, medians and ratios.

A benchmark reports; it never passes or fails on speed.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The parts of a run, in the order they run; ``--sections`` picks a subset.
SECTIONS = ("profile", "produce", "load", "peers", "memory", "scale", "airflow")
