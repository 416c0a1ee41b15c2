"""The "ETL" page as an Airflow 3.3 plugin: a FastAPI app plus a navigation entry.

Airflow finds it in one of two ways, never both: through the ``airflow.plugins`` entry point of
the installed distribution (``pip install .``, see pyproject.toml), or, where the package is not
installed (the local stack), through ``plugins/etl_ui_plugin.py`` in the plugins folder.

Why ``fastapi_apps`` + ``external_views`` (and not ``react_apps``):

* The page is server-rendered HTML with inline SVG charts, so it needs no JavaScript build and
  nothing from a CDN. A React app plugin is a JavaScript module the UI imports into its own React
  tree: it would need an npm toolchain, a bundle built against the UI's React and committed to
  the repository, and a JSON API for it to call, for the same tables and charts.
* An external view with ``url_route`` and ``destination="nav"`` is shown inside the UI, with its
  navigation around it, at ``/plugin/etl``; Airflow 3.3 frames nav views with
  ``sandbox="allow-scripts allow-same-origin allow-forms allow-downloads"``, so the framed page
  is same-origin and receives the UI's session cookie. The FastAPI app checks it on every data
  request (see ``kafka_mongo_etl_ui.app``): the api-server mounts plugin apps without any
  authentication of its own.

Every Airflow process loads plugins (a task, to find macros), but only the api-server serves
the page: the FastAPI app and the api-server's security modules are imported on the first
request, so a task's start-up pays nothing for them.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/etl"


class EtlPageApp:
    """An ASGI app that builds ``kafka_mongo_etl_ui.app`` on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            from kafka_mongo_etl_ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class EtlUiPlugin(AirflowPlugin):
    name = "kafka_mongo_etl_ui"
    fastapi_apps = [{"app": EtlPageApp(), "url_prefix": URL_PREFIX, "name": "ETL page"}]
    external_views = [
        {
            "name": "ETL",
            # Relative to the UI's base URL, so it also works when Airflow is served under a path.
            "href": "etl/",
            "icon": "etl/icon.svg",
            "url_route": "etl",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]


ENTRY_POINT = f"{__name__}:{EtlUiPlugin.__name__}"


def registered_by_entry_point() -> bool:
    """Whether an installed distribution registers this plugin in the ``airflow.plugins`` group."""
    from importlib.metadata import entry_points

    return any(point.value == ENTRY_POINT for point in entry_points(group="airflow.plugins"))
