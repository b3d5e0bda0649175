"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from unpod_provider import __version__
from unpod_provider.connection_form import provider_info_connection_type

INTEGRATION = "Unpod"


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` shows and where Airflow finds the hook, form and trigger."""
    return {
        "package-name": "airflow-provider-unpod",
        "name": "Unpod",
        "description": "Apache Airflow provider for the Unpod platform: wait for runs of AI voice agents "
        "and hand their call results (transcripts, durations, post-call data) to the next tasks.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://docs.unpod.dev/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["unpod_provider.hooks.unpod"]}],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["unpod_provider.operators.unpod"]}
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["unpod_provider.sensors.unpod"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["unpod_provider.triggers.unpod"]}],
        "connection-types": [provider_info_connection_type()],
    }
