#!/opt/secantus/bin/python
"""Start SecantusDB as the official mongo image starts mongod: root user first, then auth required.

SecantusDB provisions users only while it runs without --auth, so on the first start of an empty
/data/db this starts it on loopback, creates the root user, stops it, and leaves a marker file. The
arguments are secantusd-py's own (the compose override passes them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

DATA = Path("/data/db")
MARKER = DATA / ".root-user-created"
SERVER = ["secantusd-py", "--port", "27017", "--storage-path", str(DATA), "--standalone"]


def create_root_user(user: str, password: str) -> None:
    server = subprocess.Popen([*SERVER, "--host", "127.0.0.1"])
    try:
        client: MongoClient = MongoClient(
            "127.0.0.1", 27017, directConnection=True, serverSelectionTimeoutMS=1000
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                client.admin.command("ping")
                break
            except PyMongoError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("mongo-entrypoint: SecantusDB did not answer on 127.0.0.1:27017 within 120 s")
        client.admin.command("createUser", user, pwd=password, roles=["root"])
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    MARKER.touch()


def main() -> None:
    user = os.environ.get("MONGO_INITDB_ROOT_USERNAME")
    password = os.environ.get("MONGO_INITDB_ROOT_PASSWORD")
    auth = []
    if user and password:
        if not MARKER.exists():
            create_root_user(user, password)
        auth = ["--auth"]
    os.execvp(SERVER[0], [*SERVER, "--host", "0.0.0.0", *auth, *sys.argv[1:]])


if __name__ == "__main__":
    main()
