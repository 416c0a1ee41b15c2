"""The Airflow UI in a real browser (Debian's chromium, headless, driven by Playwright): sign in,
trigger the DAG from its form, and find the run, its chart and the consumer lag on the ETL page.

Airflow runs standalone on a temporary home and free ports against the session's broker and
MongoDB-wire server. Screenshots go to ``.artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from devstack.airflow import AirflowHome, AirflowStandalone, local_connections
from devstack.process import free_port
from devstack.run import DAG_ID, AirflowApi

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / ".artifacts" / "screenshots"
RUN_TIMEOUT = 150.0


def ensure_chromium() -> None:
    """Install Debian's chromium with ``make browser`` when it is missing; skip only if that fails."""
    if CHROMIUM.exists():
        return
    result = subprocess.run(
        ["make", "-C", str(REPO), "browser"], capture_output=True, text=True, timeout=900, check=False
    )
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing and `make browser` could not install it "
            f"(exit {result.returncode}; it needs root and Debian's apt): {result.stderr.strip()[-400:]}"
        )


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, kafka_broker, mongo_server) -> Iterator[AirflowStandalone]:
    ensure_chromium()
    state = tmp_path_factory.mktemp("ui-airflow")
    home = AirflowHome(state / "home", api_port=free_port())
    home.write(
        local_connections(kafka_broker.bootstrap_servers, mongo_server.host, mongo_server.port),
        extra={
            # Only the run this test triggers: no scheduled run (with the form's defaults) beside it.
            "scheduler": {"use_job_schedule": "False"},
            # Unpaused from the start, so a run triggered from the form is not left queued.
            "core": {"dags_are_paused_at_creation": "False"},
        },
    )
    standalone = AirflowStandalone(home, state)
    standalone.start()
    try:
        AirflowApi.for_stack(standalone).wait_for_dag(DAG_ID, 120)
        yield standalone
    finally:
        standalone.stop()


@pytest.fixture
def page(airflow: AirflowStandalone) -> Iterator:
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(30_000)
            tab = context.new_page()
            yield tab
            # Whatever the outcome, keep what the browser showed last (a failure's best clue).
            tab.screenshot(path=SCREENSHOTS / "last-state.png", full_page=True)
        finally:
            browser.close()


def wait_for_run(api: AirflowApi, topic: str, timeout: float = RUN_TIMEOUT) -> dict:
    """The run whose conf names ``topic``, once it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?limit=20&order_by=-run_after")["dag_runs"]
        mine = [run for run in runs if (run.get("conf") or {}).get("topic") == topic]
        if mine and mine[0]["state"] in ("success", "failed"):
            return mine[0]
        assert time.monotonic() < deadline, f"no finished run for topic {topic} after {timeout}s: {mine}"
        time.sleep(2)


@pytest.mark.airflow
def test_trigger_from_the_form_and_see_the_run_on_the_etl_page(airflow, page, topic, mongo_db) -> None:
    url = airflow.url
    target = f"{mongo_db}.testnum"

    # Signed out, the ETL page sends the browser to Airflow's login, which sends it back.
    page.goto(f"{url}/etl/")
    page.wait_for_url(f"{url}/auth/login**")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(airflow.home.admin_password())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/etl/")
    assert page.locator("h1").inner_text().startswith("ETL")

    # The DAG's trigger form: count 50, and this test's own topic and database.
    page.goto(f"{url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.locator('input[name="element_topic"]').fill(topic)
    form.locator('input[name="element_count"]').fill("50")
    form.locator('input[name="element_mongo_db"]').fill(mongo_db)
    page.screenshot(path=SCREENSHOTS / "trigger-form.png")
    form.get_by_role("button", name="Trigger").click()

    run = wait_for_run(AirflowApi.for_stack(airflow), topic)
    assert run["state"] == "success", run
    assert (run["conf"]["count"], run["conf"]["mongo_db"]) == (50, mongo_db)
    run_id = run["dag_run_id"]

    # The "ETL" entry of the navigation shows the page inside the UI; choose this test's target.
    page.goto(f"{url}/")
    page.get_by_role("link", name="ETL").click()
    page.wait_for_url(f"{url}/plugin/etl**")
    etl = page.frame_locator("iframe[title=ETL]")
    etl.locator("select#target").select_option(target)
    etl.get_by_role("button", name="Show").click()
    etl.locator("#target-name", has_text=target).wait_for()

    row = etl.locator(f'tr.run[data-run-id="{run_id}"]')
    assert row.locator("td.loaded").inner_text() == "50"
    assert row.locator("td.produced").inner_text() == "50"
    chart = etl.locator("svg.etl-chart")
    assert chart.locator(f'circle.point[data-run-id="{run_id}"]').count() == 1
    assert chart.locator(f'rect.bar[data-run-id="{run_id}"]').count() == 1
    partitions = etl.locator("#lag tr.partition")
    assert partitions.count() == 3  # the DAG's default for a new topic
    assert etl.locator("#lag-total").inner_text() == "0"
    page.screenshot(path=SCREENSHOTS / "etl-page.png", full_page=True)

    # The run's link leaves the iframe and opens Airflow's own page of the run.
    row.locator("a.run-link").click()
    page.wait_for_url(f"{url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}**")
    page.get_by_role("cell", name="consume", exact=True).wait_for()
    page.screenshot(path=SCREENSHOTS / "run-page.png")
