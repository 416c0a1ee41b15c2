"""The local development stack: a real Kafka broker, a MongoDB-wire server and Airflow standalone.

Used by ``make up``/``make down``/``make status`` (through ``python -m devstack``) and by the
integration-test fixtures, which start their own broker and server on free ports.
"""
