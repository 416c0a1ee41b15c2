"""The local stack keeps its promises under bad input and faults (issue 2), with real processes.

Every test runs its own services on free ports with state under ``tmp_path`` (or reuses the
session's broker and server), so a developer's ``make up`` stack on the default ports and in
``.state`` is never touched; whatever a test starts, it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.postgres import PostgresServer
from devstack.process import (
    Account,
    ManagedProcess,
    StackError,
    group_alive,
    port_is_free,
    wait_until,
)
from devstack.redis import RedisServer

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
PORT_SETTINGS = (
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "MONGO_PORT",
    "POSTGRES_PORT",
    "REDIS_PORT",
    "AIRFLOW_PORT",
)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free right now (held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _stack_env(state_dir: Path, **ports: int) -> dict[str, str]:
    """The environment of ``python -m devstack`` for a stack in ``state_dir``: the given ports,
    free ports for the other settings (never the developer stack's defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env["STATE_DIR"] = str(state_dir)
    spare = iter(_free_ports(len(PORT_SETTINGS)))
    for setting in PORT_SETTINGS:
        env[setting] = str(ports[setting] if setting in ports else next(spare))
    return env


def _devstack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The timeout only turns a hang into a failure; it is not a timing claim.
    return subprocess.run(
        [sys.executable, "-m", "devstack", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _bin_airflow(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "bin" / "airflow"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _status(stdout: str) -> dict[str, str]:
    """``python -m devstack status`` output as service -> state."""
    rows = (line.split(None, 1) for line in stdout.splitlines() if line and not line.startswith(" "))
    return {name: state for name, state in rows}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (this test) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def bare_bin(tmp_path: Path) -> Path:
    """A PATH directory with the venv's python3, make and the shells, but no java and no mvn."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in ("make", "bash", "sh"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run this test"
        (bin_dir / tool).symlink_to(found)
    return bin_dir


# 1. A port already taken ------------------------------------------------------------------------


@pytest.mark.parametrize("setting", PORT_SETTINGS)
def test_up_refuses_a_taken_port_before_starting_anything(
    setting: str, taken_port: int, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    # Redis runs only for Celery workers.
    env = _stack_env(state, **{setting: taken_port}) | {"WORKERS": "2" if setting == "REDIS_PORT" else ""}
    try:
        result = _devstack("up", env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"port {taken_port} " in result.stderr
        assert f"move ours with {setting}=<port>" in result.stderr
        assert "started" not in result.stdout
        assert sorted(state.rglob("*.pid")) == []
    finally:
        # If `up` did start something before it failed, stop it by its pid files.
        _devstack("down", env)


def test_mongo_server_refuses_a_taken_port(taken_port: int, tmp_path: Path) -> None:
    server = MongoWireServer(tmp_path / "mongo", port=taken_port)
    try:
        with pytest.raises(StackError, match=rf"port {taken_port} .*MONGO_PORT=<port>"):
            server.start()
        assert not server.process.pid_file.exists()
    finally:
        server.stop()


# 2. Starting twice is a no-op -------------------------------------------------------------------


def test_second_mongo_start_is_a_no_op_and_status_shows_both_services(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    state = tmp_path / "state"
    server = MongoWireServer(state / "mongo", port=_free_ports(1)[0])
    try:
        assert server.start() is True
        pid = server.process.pid()
        assert pid is not None

        assert MongoWireServer(state / "mongo", port=server.port).start() is False
        assert server.process.pid_file.read_text().strip() == str(pid)
        assert server.process.pid() == pid

        # The layout LocalStack expects: <STATE_DIR>/kafka, <STATE_DIR>/mongo, <STATE_DIR>/airflow.
        (state / "kafka").symlink_to(kafka_broker.state_dir, target_is_directory=True)
        env = _stack_env(
            state,
            KAFKA_PORT=kafka_broker.port,
            KAFKA_CONTROLLER_PORT=kafka_broker.controller_port,
            MONGO_PORT=server.port,
        )
        result = _devstack("status", env)
        # A healthy service shows the memory it and its children use (PSS), e.g. "(pid 12, 345 MB)".
        memory = re.compile(r"(healthy \(pid \d+), \d+ MB\)")
        assert {name: memory.sub(r"\1)", state) for name, state in _status(result.stdout).items()} == {
            "kafka": f"healthy (pid {kafka_broker.process.pid()})",
            "mongo": f"healthy (pid {pid})",
            "postgres": "not running",
            "airflow": "not running",
        }, result.stdout + result.stderr
        assert result.returncode == 1  # Airflow is down
    finally:
        server.stop()


def test_second_kafka_start_is_a_no_op(kafka_broker: KafkaBroker) -> None:
    pid = kafka_broker.process.pid()
    assert pid is not None
    again = KafkaBroker(
        kafka_broker.state_dir, port=kafka_broker.port, controller_port=kafka_broker.controller_port
    )
    assert again.start() is False
    assert kafka_broker.process.pid_file.read_text().strip() == str(pid)
    assert kafka_broker.ready()


# 3. stop() stops what its pid file names, and only that ----------------------------------------


def test_stop_ends_the_server_keeps_its_data_and_leaves_others_running(
    tmp_path: Path, mongo_server: MongoWireServer
) -> None:
    server = MongoWireServer(tmp_path / "mongo", port=_free_ports(1)[0])
    try:
        assert server.start() is True
        pid = server.process.pid()
        assert pid is not None
        with MongoClient(server.uri, serverSelectionTimeoutMS=5000) as client:
            client["devstack_test"]["docs"].insert_one({"_id": "kept", "num": 1})

        assert server.stop() is True
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not server.process.pid_file.exists()
        assert port_is_free(server.host, server.port)
        assert mongo_server.ready(), "stop() reached a server that its pid file does not name"
        assert server.stop() is False
        assert (tmp_path / "mongo" / "mongo-data").is_dir()

        assert MongoWireServer(tmp_path / "mongo", port=server.port).start() is True
        assert server.process.pid() not in (None, pid)
        with MongoClient(server.uri, serverSelectionTimeoutMS=5000) as client:
            assert list(client["devstack_test"]["docs"].find()) == [{"_id": "kept", "num": 1}]
    finally:
        server.stop()


def test_stop_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A pid file that outlived its process (a reboot) may name somebody else's process now."""
    bystander = subprocess.Popen(["sleep", "300"])  # not a group leader, as `start` makes ours
    process = ManagedProcess("mongo", tmp_path / "mongo.pid", tmp_path / "mongo.log")
    process.pid_file.write_text(f"{bystander.pid}\n")
    try:
        assert process.pid() is None
        assert process.stop() is False
        assert bystander.poll() is None
        assert not process.pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_after_the_leader_crashed_stops_the_children_it_left(tmp_path: Path) -> None:
    """Like `airflow standalone` killed by the OOM killer while its scheduler and api-server run."""
    process = ManagedProcess("airflow", tmp_path / "airflow.pid", tmp_path / "airflow.log")
    leader = process.start(["bash", "-c", "sleep 300 & sleep 300 & echo children started; wait"])
    try:
        wait_until("the children", lambda: "children started" in process.log_file.read_text(), 10, process)
        os.kill(leader, signal.SIGKILL)
        os.waitpid(leader, 0)
        assert process.pid() is None
        os.killpg(leader, 0)  # its children still run in its group

        assert process.stop() is True
        # Nothing of the group runs (exited children may wait as zombies for init to reap them).
        assert group_alive(leader) is False
        assert not process.pid_file.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)


# 4. A crashed service ---------------------------------------------------------------------------


def test_status_reports_a_crashed_mongo_with_its_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = MongoWireServer(state / "mongo", port=_free_ports(1)[0])
    env = _stack_env(state, MONGO_PORT=server.port)
    try:
        assert server.start() is True
        pid = server.process.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # This test is its parent; after `make up` has exited, init reaps it instead.
        os.waitpid(pid, 0)

        result = _devstack("status", env)
        log = state.resolve() / "mongo" / "logs" / "mongo.log"
        assert _status(result.stdout) == {
            "kafka": "not running",
            "mongo": f"CRASHED (pid file left behind); see {log}",
            "postgres": "not running",
            "airflow": "not running",
        }, result.stdout + result.stderr
        assert result.returncode == 1

        down = _devstack("down", env)
        assert "MongoDB-wire server    was not running" in down.stdout
        assert _status(_devstack("status", env).stdout)["mongo"] == "not running"
    finally:
        server.stop()


# 5. Java or Maven missing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "missing"), [((), "java and mvn"), (("java",), "mvn"), (("mvn",), "java")]
)
def test_up_without_java_or_maven_says_what_to_install(
    present: tuple[str, ...], missing: str, bare_bin: Path, tmp_path: Path
) -> None:
    for tool in present:
        (bare_bin / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    state = tmp_path / "state"
    result = _devstack("up", _stack_env(state) | {"PATH": str(bare_bin)})
    assert result.returncode == 1
    assert f"error: {missing} not found on PATH" in result.stderr
    assert "apt-get install openjdk-17-jre-headless maven" in result.stderr
    assert result.stdout == ""
    assert not state.exists()


@pytest.mark.parametrize(
    ("present", "hint"),
    [
        ((), "error: java not found. Install Java 17+ (Debian/Ubuntu: apt-get install openjdk-17-jre"),
        (("java",), "error: mvn not found. Install Maven (Debian/Ubuntu: apt-get install maven)"),
        (("java", "mvn"), None),
    ],
)
def test_make_check_tools_names_the_missing_tool(
    present: tuple[str, ...], hint: str | None, bare_bin: Path
) -> None:
    for tool in present:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run this test"
        (bare_bin / tool).symlink_to(found)
    result = subprocess.run(
        [str(bare_bin / "make"), "-C", str(REPO), "check-tools"],
        env={"PATH": str(bare_bin)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if hint is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert hint in result.stderr


# 6. bin/airflow runs against STATE_DIR's home ---------------------------------------------------


@pytest.mark.airflow
def test_bin_airflow_uses_the_home_and_connections_of_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = _stack_env(state)
    # A setting from the caller's shell must not reach the CLI: airflow.cfg alone decides.
    got = _bin_airflow(
        ["config", "get-value", "core", "dags_folder"],
        env | {"AIRFLOW__CORE__DAGS_FOLDER": "/nonexistent"},
        cwd=tmp_path,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip().splitlines()[-1] == str(DAGS)
    assert (state / "airflow" / "airflow.cfg").is_file()  # written by bin/airflow on first use

    config_port = next(port for port in _free_ports(2) if str(port) != env["KAFKA_PORT"])
    configured = _devstack("config", env | {"KAFKA_PORT": str(config_port)})
    assert configured.returncode == 0, configured.stderr
    # The CLI call's own KAFKA_PORT differs: the connection comes from the home `config` wrote.
    conn = _bin_airflow(["connections", "get", "kafka_default", "-o", "json"], env, cwd=tmp_path)
    assert conn.returncode == 0, conn.stderr
    [record] = json.loads(conn.stdout.strip().splitlines()[-1])
    assert record["conn_type"] == "kafka"
    assert record["extra_dejson"] == {"bootstrap.servers": f"127.0.0.1:{config_port}"}


# 7. The DAG folder imports with no errors -------------------------------------------------------


@pytest.mark.airflow
def test_every_dag_file_imports_through_bin_airflow(tmp_path: Path, postgres_server: PostgresServer) -> None:
    dag_files = sorted(str(path) for path in DAGS.glob("*.py") if not path.name.startswith("_"))
    assert dag_files, f"no DAG file in {DAGS}"
    # The home's metadata database is the session's PostgreSQL, as make up's is its own.
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "postgres").symlink_to(postgres_server.state_dir, target_is_directory=True)
    env = _stack_env(tmp_path / "state", POSTGRES_PORT=postgres_server.port)
    # `dags list` refuses to run on an unmigrated database, even with --local.
    migrated = _bin_airflow(["db", "migrate"], env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    # --local parses dags/ now; without it the list is what a dag-processor serialized (nothing here).
    listed = _bin_airflow(["dags", "list", "--local", "-o", "json"], env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Failed to load all files" not in listed.stderr, listed.stderr
    listed_dags = {
        dag["dag_id"]: dag["fileloc"] for dag in json.loads(listed.stdout.strip().splitlines()[-1])
    }
    assert sorted(set(listed_dags.values())) == dag_files

    # The authoritative check: `dags list-import-errors` without --local reports what a running
    # dag-processor stored, and prints [] for a broken file nobody parsed yet.
    from airflow.dag_processing.dagbag import DagBag

    # Airflow 3.3's DagBag has no include_examples; the test home sets load_examples = False.
    dagbag = DagBag(dag_folder=str(DAGS))
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(listed_dags)


# 8. PostgreSQL and Redis from their wheels ---------------------------------------------------------


@pytest.fixture
def postgres_state() -> Iterator[Path]:
    """A state directory outside pytest's private tmp_path, which 'nobody' could not enter."""
    import tempfile

    state = Path(tempfile.mkdtemp(prefix="devstack-postgres-"))
    state.chmod(0o755)
    yield state
    shutil.rmtree(state, ignore_errors=True)


def test_postgres_runs_unprivileged_keeps_its_data_and_a_second_start_is_a_no_op(
    postgres_state: Path,
) -> None:
    import psutil
    import psycopg

    server = PostgresServer(postgres_state, port=_free_ports(1)[0], durable=False)
    try:
        assert server.start() is True
        pid = server.process.pid()
        assert pid is not None
        # PostgreSQL refuses root; run as root (CI), the server runs as 'nobody'.
        expected = Account.named("nobody").uid if os.geteuid() == 0 else os.geteuid()
        assert psutil.Process(pid).uids().effective == expected != 0
        # Its state directory is open to it: no capability at all.
        assert _effective_capabilities(pid) == 0
        assert server.data_dir.stat().st_uid == expected
        assert oct(server.password_file.stat().st_mode & 0o777) == "0o600"
        with psycopg.connect(server.dsn()) as connection:
            connection.execute("CREATE TABLE kept (id int)")
            connection.execute("INSERT INTO kept VALUES (1)")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(server.dsn().replace(server.password(), "wrong"))

        assert PostgresServer(postgres_state, port=server.port).start() is False
        assert server.process.pid() == pid
        assert server.stop() is True
        assert port_is_free(server.host, server.port)

        assert server.start() is True
        with psycopg.connect(server.dsn()) as connection:
            assert connection.execute("SELECT id FROM kept").fetchall() == [(1,)]
    finally:
        server.stop()


def test_postgres_refuses_a_taken_port(taken_port: int, postgres_state: Path) -> None:
    server = PostgresServer(postgres_state, port=taken_port)
    with pytest.raises(StackError, match=rf"port {taken_port} \(PostgreSQL\).*POSTGRES_PORT=<port>"):
        server.start()
    assert not server.process.pid_file.exists()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root can run the server as another user")


def _effective_capabilities(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)[1], 16)


CAP_DAC_READ_SEARCH = 1 << 2


@root_only
def test_as_root_postgres_reads_through_a_directory_nobody_cannot_enter(tmp_path: Path) -> None:
    """pytest's base directory is private (0700), like /root for a checkout there: the server runs
    as 'nobody' with CAP_DAC_READ_SEARCH only, so it can reach its data but write nothing else."""
    import psutil

    private = next(p for p in reversed(tmp_path.parents) if not p.stat().st_mode & 0o001)
    server = PostgresServer(tmp_path / "postgres", port=_free_ports(1)[0], durable=False)
    try:
        assert server.start() is True
        pid = server.process.pid()
        assert pid is not None
        assert psutil.Process(pid).uids().effective == Account.named("nobody").uid
        assert _effective_capabilities(pid) == CAP_DAC_READ_SEARCH
        assert server.ready()
        assert not private.stat().st_mode & 0o001  # nothing was opened up
    finally:
        server.stop()


@root_only
def test_as_root_without_setpriv_postgres_says_which_directory_to_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devstack.postgres

    monkeypatch.setattr(devstack.postgres.shutil, "which", lambda name: None)
    private = next(p for p in reversed(tmp_path.parents) if not p.stat().st_mode & 0o001)
    server = PostgresServer(tmp_path / "postgres", port=_free_ports(1)[0])
    with pytest.raises(
        StackError, match=rf"runs as 'nobody', which may not enter {private}, and there is no setpriv"
    ):
        server.start()
    assert not server.process.pid_file.exists()


@root_only
def test_as_root_postgres_refuses_data_another_user_created(postgres_state: Path) -> None:
    server = PostgresServer(postgres_state, port=_free_ports(1)[0], durable=False)
    try:
        server.start()
        server.stop()
        os.chown(server.data_dir, 0, 0)  # as if `make up` had once run it as root itself
        with pytest.raises(StackError, match=r"belongs to uid 0, but PostgreSQL would run as nobody"):
            server.start()
        assert not server.process.running()
    finally:
        server.stop()


def test_redis_answers_only_with_its_password_and_stops(tmp_path: Path) -> None:
    import psutil
    import redis

    server = RedisServer(tmp_path / "redis", port=_free_ports(1)[0])
    try:
        assert server.start() is True
        assert server.url().startswith(f"redis://:{server.password()}@127.0.0.1:{server.port}/")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).ping()
        assert redis.Redis(port=server.port, password=server.password()).ping() is True
        assert server.password() not in " ".join(psutil.Process(server.process.pid()).cmdline())
        assert RedisServer(tmp_path / "redis", port=server.port).start() is False
    finally:
        assert server.stop() is True
    assert port_is_free(server.host, server.port)


def test_mongo_server_keeps_the_oplog_entries_it_is_given(tmp_path: Path) -> None:
    """The benchmark's server keeps its run's oplog; a small cap shows the setting reaches the
    server (it prunes to the cap every 1,000 writes) where the default would keep every entry."""
    capped = MongoWireServer(tmp_path / "mongo", port=_free_ports(1)[0], oplog_entries=500)
    try:
        assert capped.start() is True
        with MongoClient(capped.uri, serverSelectionTimeoutMS=5000) as client:
            for start in range(0, 3000, 500):
                client["devstack_test"]["docs"].insert_many([{"_id": i} for i in range(start, start + 500)])
            kept = client["local"]["oplog.rs"].count_documents({"ns": "devstack_test.docs"})
            assert client["devstack_test"]["docs"].count_documents({}) == 3000
        assert 500 <= kept < 1500, f"{kept} oplog entries kept with a cap of 500"
        assert "max_entries = 500" in (tmp_path / "mongo" / "secantusd.toml").read_text()
    finally:
        capped.stop()
