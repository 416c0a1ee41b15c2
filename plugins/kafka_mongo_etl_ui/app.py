"""The FastAPI app behind the ETL page, mounted by the api-server at ``/etl``.

Airflow mounts a plugin's FastAPI app as it is: none of the api-server's authentication applies
to it. So every data route here depends on Airflow's own ``requires_access_dag`` (which starts
with ``get_user``): the caller must present the UI's session cookie (``_token``) or an
``Authorization: Bearer`` token, and the auth manager must allow it to read the runs of the ETL
DAG. Without a credential the answer is 401, or for a browser a redirect to the login page; with
one the auth manager refuses, 403.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.exceptions import AirflowException
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.mongo_client import EtlMongoHook
from kafka_mongo_etl_ui.lag import consumer_lag
from kafka_mongo_etl_ui.page import PageData, render_page
from kafka_mongo_etl_ui.runs import (
    DEFAULT_TARGET,
    RUNS_LIMIT,
    DeadLetters,
    Target,
    dead_letters,
    known_targets,
    latest_runs,
    more_run_sources,
    run_rows,
    run_source,
)

log = logging.getLogger(__name__)

ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#017cee" '
    'stroke-width="2" stroke-linecap="round"><path d="M4 20V10M10 20V4M16 20v-7M22 20H2"/></svg>'
)


@dataclass(frozen=True)
class EtlPageSettings:
    """Which DAG the page belongs to (for access checks) and which connections it reads."""

    dag_id: str = "kafka_to_mongo"
    kafka_conn_id: str = "kafka_default"
    mongo_conn_id: str = "mongo_default"
    runs_limit: int = RUNS_LIMIT
    lag_timeout: float = 5.0


def _content_security_policy(nonce: str) -> str:
    # Nothing is loaded from anywhere: no CDN, no external script, and only Airflow may frame it.
    return (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
    )


def collect_page_data(target: Target, settings: EtlPageSettings) -> PageData:
    """Read everything the page shows; what cannot be read becomes a note on the page."""
    problems: list[str] = []
    documents: list[dict] = []
    targets: list[str] = []
    dead: DeadLetters | None = None
    try:
        # The ETL's own hook: the connection's timeouts bound the page too.
        with EtlMongoHook(settings.mongo_conn_id) as hook:
            client = hook.get_conn()
            database = client[target.database]
            documents = latest_runs(database, target, settings.runs_limit)
            targets = known_targets(client)
            dead = dead_letters(database, target)
    except (PyMongoError, ConnectionProblem) as err:
        problems.append(f"MongoDB ({settings.mongo_conn_id}) could not be read: {err}")
    except AirflowException as err:
        problems.append(f"Connection {settings.mongo_conn_id}: {err}")
    source = run_source(documents, target)
    lag = (
        consumer_lag(settings.kafka_conn_id, source.topic, source.group_id, settings.lag_timeout)
        if source is not None
        else None
    )
    # When the first topic's lag could not be read, Kafka is away: do not wait again per topic.
    more_lags = (
        tuple(
            consumer_lag(settings.kafka_conn_id, more.topic, more.group_id, settings.lag_timeout)
            for more in more_run_sources(documents, target)
        )
        if lag is not None and lag.error is None
        else ()
    )
    return PageData(
        target=target,
        targets=targets,
        runs=run_rows(documents),
        limit=settings.runs_limit,
        source=source,
        lag=lag,
        dead_letters=dead,
        problems=problems,
        more_lags=more_lags,
    )


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def create_app(settings: EtlPageSettings | None = None) -> FastAPI:
    settings = settings or EtlPageSettings()
    app = FastAPI(title="ETL page", docs_url=None, redoc_url=None, openapi_url=None)
    may_read_runs = Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=settings.dag_id))

    @app.exception_handler(HTTPException)
    async def refuse(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 401 and _wants_html(request):
            # A browser without a session goes to Airflow's login, and back here afterwards.
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, dependencies=[may_read_runs])
    def etl_page(target: str = Query(str(DEFAULT_TARGET), max_length=300)) -> HTMLResponse:
        # A plain def: FastAPI runs it in its thread pool, so the blocking MongoDB and Kafka
        # calls never hold up the api-server's event loop.
        try:
            chosen = Target.parse(target)
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        nonce = secrets.token_urlsafe(16)
        html = render_page(collect_page_data(chosen, settings), nonce)
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": _content_security_policy(nonce),
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        # The navigation's icon: static, no data, so it needs no sign-in.
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    return app
