# The Airflow image that docker-compose.yaml runs. The ETL package is installed in it (rebuild after
# changing plugins/: `docker compose build`); the DAG files are not baked in, the compose file mounts dags/.
#
# The base is the official *slim* image, for what it brings besides Python packages: the `airflow` user
# (uid 50000, gid 0) that owns the compose file's volumes, the entrypoint (waits for the database and the
# broker, runs `airflow <command>`), /clean-logs for the log groomer, dumb-init. The Python packages are
# the runtime lock alone, in a virtualenv that sees none of the image's own: installing the lock over the
# full image's preinstalled providers broke them (they need python-dateutil<3 and protobuf<7, the lock
# pins newer), and pip said so and exited 0.
# AIRFLOW_BASE_IMAGE: the official image by default; docker-compose.yaml passes its own variable of the
# same name, which docker/local-images.env points at docker/local/airflow on a machine without a registry.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:slim-3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

ENV VIRTUAL_ENV=/home/airflow/venv
COPY --chown=airflow:0 requirements.txt /home/airflow/requirements.txt
# The ETL package (kafka_mongo_etl, and kafka_mongo_etl_ui, whose ETL page registers through the
# airflow.plugins entry point), built from the same plugins/ tree the local stack runs: one copy.
# COPY creates missing parent directories as root, whatever --chown says: made here first, as airflow,
# so that pip can write the package's build metadata (egg-info) into plugins/.
RUN mkdir -p /home/airflow/src/plugins
COPY --chown=airflow:0 pyproject.toml README.md /home/airflow/src/
COPY --chown=airflow:0 plugins/kafka_mongo_etl /home/airflow/src/plugins/kafka_mongo_etl
COPY --chown=airflow:0 plugins/kafka_mongo_etl_ui /home/airflow/src/plugins/kafka_mongo_etl_ui
# --no-deps: the lock is the whole dependency set (uv resolved it), nothing else may come in; the
# package then goes in on top of it, bringing nothing of its own. `pip check`
# then fails this build if any installed package's requirement is not met by the lock. The base image
# sets PIP_USER=true, which a virtualenv refuses. The last line fails the build on a version mix-up.
RUN python -m venv "${VIRTUAL_ENV}" \
    && PIP_USER=false "${VIRTUAL_ENV}/bin/pip" install --no-cache-dir --no-deps \
        -r /home/airflow/requirements.txt \
    && PIP_USER=false "${VIRTUAL_ENV}/bin/pip" install --no-cache-dir --no-deps /home/airflow/src \
    && PIP_USER=false "${VIRTUAL_ENV}/bin/pip" check \
    && "${VIRTUAL_ENV}/bin/python" -c 'from importlib.metadata import version as v; \
assert v("apache-airflow") == v("apache-airflow-core") == "3.3.2", v("apache-airflow")'
# Every `airflow`, `celery` and `python` the entrypoint, the healthchecks and the services run is the
# virtualenv's.
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}"

# The compose file mounts named volumes on these (task logs; the SimpleAuthManager passwords file that
# airflow-init writes). A new named volume takes the owner of the directory it is mounted on, so creating
# them here as `airflow` means no container needs root to prepare them. (-p keeps logs/ as it is.)
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth
