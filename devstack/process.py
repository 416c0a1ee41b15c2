"""Start, watch and stop one background service by its pid file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StackError(RuntimeError):
    """A service could not be started or checked; the message says what to do."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing accepts connections on ``host:port`` and it can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for test fixtures)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): reap it if it is ours, and count it as gone either way
    # (another process that started it, such as a test, reaps it when it gets round to it).
    with contextlib.suppress(ChildProcessError):
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    return not _is_zombie(pid)


def memory_mb(pid: int) -> float | None:
    """Memory of ``pid`` and all its descendants, in MB: the sum of their proportional set sizes
    (shared pages split among the processes sharing them), what a container's memory limit sees.
    RSS where the system reports no PSS; None when the process is gone or not readable."""
    import psutil

    try:
        leader = psutil.Process(pid)
        processes = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
    return total / 2**20


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass(frozen=True)
class Account:
    """An unprivileged user to run a server as, for the servers that refuse to run as root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> Account:
        import pwd

        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)

    def popen_arguments(self) -> dict[str, Any]:
        # No supplementary groups: root's would let the server read files group-owned by root.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def first_closed_directory(self, directory: Path) -> Path | None:
        """The first directory on the way to ``directory`` this account may not enter, or None."""
        for path in [*reversed(directory.resolve().parents), directory.resolve()]:
            mode = path.stat()
            if mode.st_uid == self.uid:
                allowed = mode.st_mode & stat.S_IXUSR
            elif mode.st_gid == self.gid:
                allowed = mode.st_mode & stat.S_IXGRP
            else:
                allowed = mode.st_mode & stat.S_IXOTH
            if not allowed:
                return path
        return None


@dataclass
class ManagedProcess:
    """A detached process in its own session, recorded in ``pid_file``, output in ``log_file``.

    ``stop`` signals the whole process group it leads, so children it spawned (Airflow's
    scheduler, api-server, ...) stop with it; it never signals a pid it did not write.
    """

    name: str
    pid_file: Path
    log_file: Path

    def recorded_pid(self) -> int | None:
        """The pid in the pid file, alive or not."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self) -> int | None:
        """The recorded pid if that process runs and leads its own group, as ``start`` made it.

        A pid file that outlived its process (a reboot) may name somebody else's process now.
        """
        pid = self.recorded_pid()
        return pid if pid is not None and pid_alive(pid) and _leads_group(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        account: Account | None = None,
    ) -> int:
        """Start ``argv`` detached; with ``account``, as that user (only root can do that)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                **(account.popen_arguments() if account else {}),
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 30.0, first_signal: int = signal.SIGTERM) -> bool:
        """Stop the process group; True if something was running. SIGKILL after ``timeout``."""
        pid = self.recorded_pid()
        # The leader may have died (kill -9, OOM) while the children it spawned still run in its
        # group (Airflow's scheduler and api-server holding their ports): stop them too.
        if pid is None or (self.pid() is None and not group_alive(pid)):
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not pid_alive(pid) and not group_alive(pid):
                    self.pid_file.unlink(missing_ok=True)
                    return True
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(process.pid) == pgid and not _is_zombie(process.pid):
                return True
    return False


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    process: ManagedProcess | Sequence[ManagedProcess] | None = None,
    interval: float = 0.25,
) -> None:
    """Poll ``check`` until it is true; fail early if ``process`` (or one of several) died, naming its log."""
    processes = [] if process is None else [process] if isinstance(process, ManagedProcess) else process
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        for died in [p for p in processes if not p.running()][:1]:
            raise StackError(f"{died.name} exited while starting; its log is {died.log_file}:\n{died.tail()}")
        if time.monotonic() > deadline:
            logs = ", ".join(str(p.log_file) for p in processes)
            raise StackError(f"{what} was not ready after {timeout:.0f}s{'; see ' + logs if logs else ''}")
        time.sleep(interval)
