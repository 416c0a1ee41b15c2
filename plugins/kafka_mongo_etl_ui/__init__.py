"""The "ETL" page in the Airflow UI: recent runs of a target, throughput, consumer lag, dead letters.

One module per job: ``runs`` (audit documents and dead letters from MongoDB), ``lag`` (the
consumer group's lag from Kafka), ``charts`` (server-side SVG), ``page`` (the HTML), ``app``
(the FastAPI app and its authentication). ``plugins/etl_ui_plugin.py`` registers it with
Airflow; see ``docs/ui.md``.

This package is listed in ``plugins/.airflowignore``: Airflow's plugin loader would otherwise
import each of its files a second time as a top-level module (``app``, ``page``, ...).
"""
