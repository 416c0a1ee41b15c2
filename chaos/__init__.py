"""Crash injection: SIGKILL the ETL's task process at the points where a crash could lose or
double data, run the task again as Airflow's retry would, and check the exact ``_id`` set.

``python -m chaos`` (``make chaos``) runs randomized trials and prints a table;
``python -m chaos.child`` is the task process a trial starts (and kills).
See docs/crash-injection.md.
"""
