"""The ETL page through Airflow's own api-server app (in process, no browser): who may see it,
and what it shows for real runs, real offsets and 10,000 audit documents."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from confluent_kafka import Producer

from devstack.process import free_port
from kafka_mongo_etl.audit import AUDIT_COLLECTION
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, default_group_id, run_consume, run_produce
from kafka_mongo_etl_ui.runs import RUNS_LIMIT

RUN_ROW = re.compile(r'<tr class="run" data-run-id="([^"]+)"')
POINT = re.compile(r'<circle class="point rate" data-run-id="([^"]+)"')
PARTITION_ROW = re.compile(
    r'<tr class="partition" data-partition="(\d+)"><td>\d+</td><td class="num committed">([\d,]+)</td>'
    r'<td class="num high">([\d,]+)</td><td class="num lag">([\d,]+)</td>'
)


@pytest.fixture(scope="module")
def api(airflow_db) -> Iterator:
    """Airflow's api-server app with this repository's plugins, as ``airflow api-server`` builds it."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    app = create_app()
    try:
        yield TestClient(app, follow_redirects=False)
    finally:
        purge_cached_app()


@pytest.fixture(scope="module")
def token(api, airflow_home) -> str:
    """A JWT for the admin user, from the SimpleAuthManager's own token endpoint."""
    password = airflow_home.admin_password()
    assert password, f"no generated admin password in {airflow_home.passwords_file}"
    response = api.post("/auth/token", json={"username": "admin", "password": password})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def etl_page(api, token: str, target: str) -> str:
    # The UI's way: the session cookie, not a header.
    response = api.get("/etl/", params={"target": target}, cookies={"_token": token})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def audit_document(mongo_db: str, n: int, target: str | None = None) -> dict:
    run_id = f"manual__{n:05d}"
    return {
        "_id": f"kafka_to_mongo/{run_id}",
        "dag_run_id": run_id,
        "topic": "t_audit_only",
        "group_id": "g_audit_only",
        "target": target or f"{mongo_db}.testnum",
        "produced": {"count": 10},
        "records": 10,
        "loaded": 10,
        "seconds": 1.0,
        "records_per_second": 10.0,
        "state": "success",
        "updated_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
    }


def test_an_anonymous_request_is_refused_and_a_browser_is_sent_to_sign_in(
    api, connections, mongo_db, mongo_client
) -> None:
    mongo_client[mongo_db][AUDIT_COLLECTION].insert_one(audit_document(mongo_db, 1))
    target = {"target": f"{mongo_db}.testnum"}

    as_api = api.get("/etl/", params=target, headers={"Accept": "application/json"})
    assert as_api.status_code == 401
    assert as_api.json() == {"detail": "Not authenticated"}

    as_browser = api.get("/etl/", params=target, headers={"Accept": "text/html,*/*"})
    assert as_browser.status_code == 303
    login = urlsplit(as_browser.headers["location"])
    assert login.path == "/auth/login"
    assert urlsplit(parse_qs(login.query)["next"][0]).path == "/etl/"

    forged = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
    with_bad_header = api.get("/etl/", params=target, headers={"Authorization": f"Bearer {forged}"})
    with_bad_cookie = api.get("/etl/", params=target, cookies={"_token": forged})
    assert (with_bad_header.status_code, with_bad_cookie.status_code) == (403, 403)

    for refused in (as_api, as_browser, with_bad_header, with_bad_cookie):
        assert "manual__00001" not in refused.text

    # Only the navigation icon is public: it is a static picture.
    icon = api.get("/etl/icon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_a_signed_in_user_sees_a_real_run_its_lag_and_its_dead_letters(
    api, token, connections, kafka_broker, topic, mongo_db, mongo_client
) -> None:
    batch = f"kafka_to_mongo/{topic}-run-1"
    run_produce(kafka_conn_id="kafka_default", topic=topic, partitions=3, batch=batch, start=0, count=30)
    # Two records the drain cannot load: they become dead letters, and the run still succeeds.
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(topic, key=b"bad-1", value=b"not json", partition=0)
    producer.produce(topic, key=b"bad-2", value=b"[1, 2]", partition=1)
    assert producer.flush(30) == 0
    job = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=topic,
        mongo_db=mongo_db,
        mongo_collection="testnum",
        batch=batch,
        run_id=f"{topic}-run-1",
        dead_letter_policy=DeadLetterPolicy(max_count=10),
    )
    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"]) == (30, 2)
    # Seven more records arrive after the run: the lag the page must show.
    run_produce(kafka_conn_id="kafka_default", topic=topic, partitions=3, batch=batch, start=30, count=7)

    html = etl_page(api, token, f"{mongo_db}.testnum")

    assert RUN_ROW.findall(html) == [job.run_id]
    row = html[html.index(f'data-run-id="{job.run_id}"') :]
    assert '<td class="num loaded">30</td>' in row[:2000]
    assert '<td class="num dead-letters">2</td>' in row[:2000]
    assert POINT.findall(html) == [job.run_id]
    partitions = {int(p): (int(c), int(h), int(lag)) for p, c, h, lag in PARTITION_ROW.findall(html)}
    assert sorted(partitions) == [0, 1, 2]
    committed_by_run = {int(p): v["committed"] for p, v in result["partitions"].items()}
    assert {p: c for p, (c, _, _) in partitions.items()} == committed_by_run
    assert sum(c for c, _, _ in partitions.values()) == 32  # 30 loaded + 2 dead letters
    assert sum(h for _, h, _ in partitions.values()) == 39
    assert all(lag == h - c for c, h, lag in partitions.values())
    assert '<th class="num" id="lag-total">7</th>' in html
    assert f"<code>{default_group_id(mongo_db, 'testnum')}</code>" in html

    dlq = list(mongo_client[mongo_db]["testnum_dlq"].find())
    assert len(dlq) == 2
    assert '<strong id="dlq-total">2</strong>' in html
    assert html.count('<tr class="dead-letter">') == 2
    for letter in dlq:
        assert f"<code>{letter['code']}</code>" in html


def test_a_run_drained_per_partition_is_one_row_with_the_sums_of_its_drains(
    api, token, connections, topic, mongo_db, mongo_client
) -> None:
    from dataclasses import replace

    batch = f"kafka_to_mongo/{topic}-run-1"
    produced = run_produce(
        kafka_conn_id="kafka_default", topic=topic, partitions=3, batch=batch, start=0, count=45
    )
    job = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=topic,
        mongo_db=mongo_db,
        mongo_collection="testnum",
        batch=batch,
        run_id=f"{topic}-run-1",
    )
    results = [run_consume(replace(job, partitions=(p,)), produced) for p in range(3)]
    assert sum(r["loaded"] for r in results) == 45

    html = etl_page(api, token, f"{mongo_db}.testnum")

    assert RUN_ROW.findall(html) == [job.run_id]
    row = html[html.index(f'data-run-id="{job.run_id}"') :][:2000]
    assert '<td class="num loaded">45</td>' in row and '<td class="num produced">45</td>' in row
    assert "(3 drains)" in row
    assert POINT.findall(html) == [job.run_id]


def test_the_page_stays_bounded_with_ten_thousand_audit_documents(
    api, token, connections, mongo_db, mongo_client
) -> None:
    audit = mongo_client[mongo_db][AUDIT_COLLECTION]
    audit.insert_many([audit_document(mongo_db, n) for n in range(10_000)])
    audit.insert_one(audit_document(mongo_db, 10_000, target=f"{mongo_db}.other"))

    html = etl_page(api, token, f"{mongo_db}.testnum")

    newest = [f"manual__{n:05d}" for n in range(9_999, 9_999 - RUNS_LIMIT, -1)]
    assert RUN_ROW.findall(html) == newest
    assert sorted(POINT.findall(html)) == sorted(newest)
    # The page made its indexes, and its query is answered from one of them, not a collection scan.
    assert "target_1_updated_at_-1" in audit.index_information()
    plan = audit.find({"target": f"{mongo_db}.testnum"}).sort("updated_at", -1).limit(RUNS_LIMIT).explain()
    assert "'indexName': 'target_1_updated_at_-1'" in str(plan["queryPlanner"]["winningPlan"])
    # Both targets of the database are offered in the selector.
    options = re.findall(r'<option value="([^"]+)"', html)
    assert {f"{mongo_db}.testnum", f"{mongo_db}.other"} <= set(options)


def test_a_target_that_is_not_database_dot_collection_is_refused(api, token, connections) -> None:
    response = api.get("/etl/", params={"target": "no-dot"}, cookies={"_token": token})
    assert response.status_code == 400
    assert "<database>.<collection>" in response.json()["detail"]


def test_a_target_without_runs_says_so_and_measures_no_lag(api, token, connections, mongo_db) -> None:
    html = etl_page(api, token, f"{mongo_db}.nothing_here")

    assert RUN_ROW.findall(html) == []
    assert 'id="no-runs"' in html and 'id="lag-unknown"' in html and 'id="no-dlq"' in html
    assert "No runs of this target yet" in html


def test_the_page_still_renders_and_says_why_when_kafka_or_mongodb_is_away(
    api, token, connections, monkeypatch, mongo_db, mongo_client
) -> None:
    mongo_client[mongo_db][AUDIT_COLLECTION].insert_one(audit_document(mongo_db, 1))
    nothing_listens = f"127.0.0.1:{free_port()}"
    kafka_away = {"conn_type": "kafka", "extra": {"bootstrap.servers": nothing_listens}}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(kafka_away))

    html = etl_page(api, token, f"{mongo_db}.testnum")

    assert RUN_ROW.findall(html) == ["manual__00001"]
    assert 'id="lag-error"' in html and "Lag unavailable" in html
    assert 'class="partition"' not in html

    host, port = nothing_listens.split(":")
    mongo_away = {
        "conn_type": "mongo",
        "host": host,
        "port": int(port),
        "extra": {"serverSelectionTimeoutMS": 300},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", json.dumps(mongo_away))

    html = etl_page(api, token, f"{mongo_db}.testnum")

    assert "MongoDB (mongo_default) could not be read" in html
    assert RUN_ROW.findall(html) == []
