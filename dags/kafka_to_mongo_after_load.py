"""An example of a DAG scheduled on the collection's asset: it runs after each load into it.

``consume`` (in ``kafka_to_mongo`` and ``kafka_to_mongo_on_arrival``) records an asset event on
``mongodb://<host>:<port>/<db>/<collection>`` after every successful load; this DAG reads the
events that started it and reports what they loaded. Put your own downstream work here.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, Asset, get_current_context, task

log = logging.getLogger(__name__)

# The local stack's collection (make up: MongoDB-wire server on 127.0.0.1:27017, dev only). For
# another deployment, use the host and port of its mongo_default connection.
LOCAL_COLLECTION = "mongodb://127.0.0.1:27017/testnum/testnum"


def build_after_load(
    dag_id: str = "kafka_to_mongo_after_load",
    collection_uri: str = LOCAL_COLLECTION,
    is_paused_upon_creation: bool | None = None,
) -> DAG:
    """The example for one collection asset."""
    collection = Asset(uri=collection_uri)
    with DAG(
        dag_id=dag_id,
        schedule=[collection],
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        is_paused_upon_creation=is_paused_upon_creation,
        doc_md=__doc__,
        tags=["mongodb", "etl"],
    ) as after_load:

        @task(retries=2)
        def report_loads() -> list[dict[str, Any]]:
            """The loads that triggered this run, as their asset events describe them."""
            # Keyed by the asset and by the alias it came through: read the asset's only.
            events = get_current_context()["triggering_asset_events"][collection]
            loads = [
                {"source_dag_id": e.source_dag_id, "source_run_id": e.source_run_id, **e.extra}
                for e in events
            ]
            for load in loads:
                log.info(
                    "%s loaded %s documents (run %s)",
                    load["source_dag_id"],
                    load.get("loaded"),
                    load["source_run_id"],
                )
            return loads

        report_loads()
    return after_load


kafka_to_mongo_after_load = build_after_load()
