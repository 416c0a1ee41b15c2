"""Kafka -> MongoDB batch ETL: produce a numbered batch, drain a topic to its high watermark,
load it into MongoDB exactly once in effect.

One module per job: ``produce`` (a batch to Kafka), ``drain`` (a topic to its watermark),
``mongo_sink`` (idempotent bulk writes), ``lease`` (one drain per consumer group at a time),
``audit`` (one document per run), ``tasks`` (what the DAG's tasks call).

For Airflow: ``operators`` (``KafkaToMongoOperator``, ``ProduceNumberedBatchOperator``),
``lineage`` (asset URIs and OpenLineage datasets), ``parallelism`` (one drain or one per
partition), ``arrivals`` (the trigger behind the event-driven DAG). Installable with
``pip install .``; the operators import the Kafka and MongoDB clients when a task runs, not
when a DAG file is parsed.
"""
