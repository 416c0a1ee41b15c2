"""How the Mongo-wire server's speed drifts during a run: single-document inserts and one bulk
upsert, on a scratch collection, at points of the run.

SecantusDB's ``insert_one`` gets slower as the server accumulates writes (even dropped ones),
while batched writes barely do; the probes put that drift next to the contenders' figures.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import MongoClient, ReplaceOne

from bench.load import DB
from bench.topics import unique

INSERT_ONE_PROBES = 500
UPSERT_PROBES = 5_000


def probe(mongo_uri: str, when: str) -> dict[str, Any]:
    client: MongoClient = MongoClient(mongo_uri)
    name = unique("probe")
    collection = client[DB][name]
    try:
        began = time.perf_counter()
        for num in range(INSERT_ONE_PROBES):
            collection.insert_one({"num": num})
        insert_one_ms = (time.perf_counter() - began) / INSERT_ONE_PROBES * 1000
        requests = [
            ReplaceOne({"_id": f"p/{num}"}, {"num": num}, upsert=True) for num in range(UPSERT_PROBES)
        ]
        began = time.perf_counter()
        collection.bulk_write(requests, ordered=False)
        upserts_per_second = UPSERT_PROBES / (time.perf_counter() - began)
        client[DB].drop_collection(name)
    finally:
        client.close()
    return {
        "when": when,
        "insert_one_ms": round(insert_one_ms, 3),
        "bulk_upserts_per_second": round(upserts_per_second, 1),
    }
