"""Network faults between the services: Toxiproxy in front of the broker and the MongoDB-wire
server, a fault mid-flight in a real task run, Airflow-style retries, then the exact ``_id`` set.

``python -m faults`` (``make faults``) runs randomized trials per fault kind and prints a table.
See docs/faults.md.
"""
