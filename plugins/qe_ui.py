"""Registers the "Quant Engine" section of the Airflow UI: the pages of :mod:`quant_engine_ui`.

Airflow mounts the FastAPI app on the api-server under ``/quant-engine`` and shows it in the UI's
navigation as an external view (an iframe of the same origin, so the login cookie goes along).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from quant_engine_ui.app import URL_PREFIX, create_app


class QuantEngineUIPlugin(AirflowPlugin):
    """WFO reports, the model registry, drift reports and the bridge's health in the Airflow UI."""

    name = "quant_engine_ui"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Quant Engine"}]
    external_views = [
        {
            "name": "Quant Engine",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "quant-engine",
        }
    ]
