"""What a load read and wrote, named the way the providers name it: Airflow assets and
OpenLineage datasets.

The topic is ``kafka://<first bootstrap server>/<topic>`` (the Kafka provider's asset scheme) and
the collection ``mongodb://<host>:<port>/<db>/<collection>`` (the Mongo provider's). Both hosts
come from the connections, so they are only known when a task runs: the operators declare an
``AssetAlias`` as their outlet and attach these concrete assets to it at run time, which makes
Airflow create the asset on first use and record an event on it after every successful load.
OpenLineage datasets are derived from the same URIs by the providers' own converters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import Asset, AssetAlias

# Every load of the toolkit attaches its collection to this alias, every produce its topic: a DAG
# scheduled on one of them runs after any load (or produce) of any DAG that uses the operators.
LOADS_ALIAS = "kafka_mongo_etl.loads"
PRODUCED_ALIAS = "kafka_mongo_etl.produced"
MONGO_DEFAULT_PORT = 27017


def loads_alias() -> AssetAlias:
    return AssetAlias(name=LOADS_ALIAS)


def produced_alias() -> AssetAlias:
    return AssetAlias(name=PRODUCED_ALIAS)


def topic_uri(bootstrap_servers: str, topic: str) -> str:
    """``kafka://host:port/topic`` for the first of ``bootstrap_servers`` (as OpenLineage names it)."""
    first = bootstrap_servers.split(",")[0].strip()
    if "://" in first:  # "SASL_SSL://broker:9093": the listener name is not part of the address
        first = first.split("://", 1)[1]
    if not first:
        raise ValueError("the Kafka connection has no bootstrap server to name the topic's asset by")
    return f"kafka://{first}/{topic}"


def collection_uri(host: str, port: int | None, database: str, collection: str) -> str:
    """``mongodb://host:port/db/collection``; the first host of a list, 27017 when none is given."""
    first = host.split(",")[0].strip()
    if not first:
        raise ValueError("the MongoDB connection has no host to name the collection's asset by")
    if port is None and ":" in first:
        first, _, given = first.rpartition(":")
        port = int(given)
    return f"mongodb://{first}:{port or MONGO_DEFAULT_PORT}/{database}/{collection}"


def kafka_topic_uri(kafka_conn_id: str, topic: str) -> str:
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    extra = KafkaBaseHook(kafka_config_id=kafka_conn_id).get_connection(kafka_conn_id).extra_dejson
    return topic_uri(str(extra.get("bootstrap.servers") or ""), topic)


def mongo_collection_uri(mongo_conn_id: str, database: str, collection: str) -> str:
    from airflow.providers.mongo.hooks.mongo import MongoHook

    connection = MongoHook.get_connection(mongo_conn_id)
    return collection_uri(str(connection.host or ""), connection.port, database, collection)


@dataclass(frozen=True)
class Lineage:
    """The URIs a task read from and wrote to, once it knows them."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def assets(self, uris: tuple[str, ...]) -> list[Asset]:
        return [Asset(uri=uri) for uri in uris]

    def openlineage(self, output_rows: int | None = None) -> Any:
        """An ``OperatorLineage``; the OpenLineage provider is imported only here."""
        from airflow.providers.apache.kafka.assets.kafka import convert_asset_to_openlineage as kafka_dataset
        from airflow.providers.mongo.assets.mongo import convert_asset_to_openlineage as mongo_dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        converters = {"kafka": kafka_dataset, "mongodb": mongo_dataset}

        def dataset(uri: str, rows: int | None = None) -> Any:
            converted = converters[urlsplit(uri).scheme](Asset(uri=uri), None)
            if rows is None:
                return converted
            from openlineage.client.event_v2 import OutputDataset
            from openlineage.client.facet_v2 import output_statistics_output_dataset

            statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)
            return OutputDataset(
                namespace=converted.namespace,
                name=converted.name,
                outputFacets={"outputStatistics": statistics},
            )

        return OperatorLineage(
            inputs=[dataset(uri) for uri in self.inputs],
            outputs=[dataset(uri, output_rows) for uri in self.outputs],
        )
