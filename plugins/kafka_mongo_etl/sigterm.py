"""SIGTERM as an exception: how a drain blocked in a socket read hears Airflow's "stop"."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from kafka_mongo_etl.errors import StopRequested


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``StopRequested`` in the main thread.

    Airflow's supervisor sends SIGTERM for "mark failed", a task the server no longer knows and a
    worker shutdown; the task runner answers it only by calling the operator's ``on_kill``, and
    SIGKILL follows five seconds later, so a drain blocked in a socket read would not notice.
    (The execution timeout is the runner's SIGALRM, which raises ``AirflowTaskTimeout`` itself.)
    The handler calls the previous one first (so ``on_kill`` still runs), then raises: a blocking
    read is interrupted (PEP 475) and the drain unwinds through its ``finally`` blocks without
    committing anything it had not written. Outside the main thread, or when SIGTERM is ignored,
    it does nothing.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise StopRequested(
            "Airflow asked this try to stop (SIGTERM: 'mark failed', a task the server no longer "
            "knows, or a worker shutdown); it stopped before committing anything it had not written"
        )

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
