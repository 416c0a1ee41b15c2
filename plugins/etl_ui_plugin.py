"""The ETL page for a plugins folder: ``kafka_mongo_etl_ui.plugin.EtlUiPlugin``, unless the
installed distribution already registers it through its ``airflow.plugins`` entry point.

Airflow loads the plugins folder first and entry points second; a plugin registered twice is
skipped the second time and reported as a plugin import error. So this module exposes the plugin
only where the distribution is not installed (the local stack runs from ``plugins/``).
"""

from __future__ import annotations

from kafka_mongo_etl_ui.plugin import EtlUiPlugin, registered_by_entry_point

if registered_by_entry_point():
    del EtlUiPlugin
