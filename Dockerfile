# The Airflow image that docker-compose.yaml runs: the official image plus this project's locked
# dependencies. DAGs and plugins are not baked in; the compose file mounts dags/ and plugins/.
FROM apache/airflow:3.3.2-python3.11

# Installed at build time as the image's default `airflow` user (into its user site), the way the image
# docs describe extending it; not through _PIP_ADDITIONAL_REQUIREMENTS, which reinstalls on every start.
# requirements.txt is the full runtime lock of the local stack and pins apache-airflow==3.3.2, the same
# version as the base image. docker/requirements-compose.txt adds what only this deployment needs (the
# Celery provider and the Postgres driver), resolved together with the lock so it moves no pin in it.
COPY --chown=airflow:0 requirements.txt docker/requirements-compose.txt /opt/airflow/requirements/
RUN pip install --no-cache-dir \
        -r /opt/airflow/requirements/requirements.txt \
        -r /opt/airflow/requirements/requirements-compose.txt \
    && python -c 'from importlib.metadata import version as v; \
assert v("apache-airflow") == v("apache-airflow-core") == "3.3.2", v("apache-airflow")'

# The compose file mounts named volumes on these (task logs; the SimpleAuthManager passwords file that
# airflow-init writes). A new named volume takes the owner of the directory it is mounted on, so creating
# them here as `airflow` means no container needs root to prepare them. (-p keeps logs/ as it is.)
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth
