"""The trial core that the fault injectors plug into: ``chaos`` (SIGKILL of the task process at
its kill points) and ``faults`` (network faults through Toxiproxy).

``work``: what one task try does; ``versions``: the records a trial produces, several versions per
key; ``checks``: the exact ``_id`` set, final content and offsets after the retries; ``harness``:
the plan of trials, the master seed, the services, the results table and the details file.
See docs/crash-injection.md and docs/faults.md.
"""
