"""The benchmark harness behind ``make bench``: every contender on one broker, one Mongo-wire
server and the same data, in one run, alternating contenders, medians and ratios.

A benchmark reports; it never passes or fails on speed.
"""

# The parts of a run, in the order they run; ``--sections`` picks a subset.
SECTIONS = ("profile", "produce", "load", "fixed", "partitions", "write_model", "memory", "airflow")
