#!/bin/bash
# First start of an empty data directory: initdb with POSTGRES_USER as the superuser, then create
# POSTGRES_DB, as the official image does. Then run the server, listening on every interface.
set -euo pipefail
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=${POSTGRES_USER}}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    initdb --username="${POSTGRES_USER}" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD}") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "${PGDATA}"
    echo "host all all all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
    echo "listen_addresses = '*'" >> "${PGDATA}/postgresql.conf"
    if [ "${POSTGRES_DB}" != postgres ]; then
        postgres --single -D "${PGDATA}" postgres <<< "CREATE DATABASE \"${POSTGRES_DB}\";" > /dev/null
    fi
fi
exec "$@"
