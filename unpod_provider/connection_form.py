"""The Unpod connection form, defined once.

Airflow 3.2+ reads it from the provider-info dict (``conn-fields``, ``ui-field-behaviour``,
``hook-name``); Airflow 3.0/3.1 call the hook's ``get_connection_form_widgets()`` and
``get_ui_field_behaviour()``. Both are derived from the constants below, and a test checks they
agree, so the UI cannot drift from the hook.
"""

from __future__ import annotations

from typing import Any

from unpod_provider.protocol import (
    AUTH_SCHEMES,
    DEFAULT_AUTH_SCHEME,
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT_SECONDS,
)

CONN_TYPE = "unpod"
HOOK_NAME = "Unpod"
HOOK_CLASS_NAME = "unpod_provider.hooks.unpod.UnpodHook"

HIDDEN_FIELDS: list[str] = ["schema", "port", "login"]
RELABELING: dict[str, str] = {"host": "Base URL", "password": "API Token"}
PLACEHOLDERS: dict[str, str] = {
    "host": DEFAULT_BASE_URL,
    "password": "the 40-character API token from Unpod's settings",
    "org_handle": "acme.com",
    "auth_scheme": DEFAULT_AUTH_SCHEME,
    "timeout": str(int(DEFAULT_TIMEOUT_SECONDS)),
}

#: Extra fields, in the JSON-schema form Airflow 3.2+ expects under ``conn-fields``.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "org_handle": {
        "label": "Org Handle",
        "description": "Your organization's handle (domain_handle), sent as the Org-Handle header. Required.",
        "schema": {"type": ["string", "null"]},
    },
    "auth_scheme": {
        "label": "Auth Scheme",
        "description": (
            "Authorization scheme: Token (default, the API token), Bearer or JWT (a platform JWT). "
            "The Unpod server takes only JWT/Bearer on organizations and spaces; Token works on "
            "runs, tasks and creating runs."
        ),
        "schema": {"type": ["string", "null"], "enum": [*AUTH_SCHEMES, None], "default": DEFAULT_AUTH_SCHEME},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Read timeout of each request. Default 30.",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT_SECONDS},
    },
}


def ui_field_behaviour() -> dict[str, Any]:
    """The hook-method form of the field behaviour (Airflow 3.0/3.1)."""
    return {
        "hidden_fields": list(HIDDEN_FIELDS),
        "relabeling": dict(RELABELING),
        "placeholders": dict(PLACEHOLDERS),
    }


def provider_info_connection_type() -> dict[str, Any]:
    """The ``connection-types`` entry of the provider-info dict (Airflow 3.2+)."""
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": HOOK_CLASS_NAME,
        "hook-name": HOOK_NAME,
        "conn-fields": {name: {**spec, "schema": dict(spec["schema"])} for name, spec in CONN_FIELDS.items()},
        "ui-field-behaviour": {
            "hidden-fields": list(HIDDEN_FIELDS),
            "relabeling": dict(RELABELING),
            "placeholders": dict(PLACEHOLDERS),
        },
    }


def connection_form_widgets() -> dict[str, Any]:
    """wtforms fields for Airflow 3.0/3.1, built from ``CONN_FIELDS`` (imports wtforms lazily)."""
    from wtforms import StringField
    from wtforms.validators import Optional

    try:
        from flask_babel import lazy_gettext
    except ImportError:  # FAB is optional in Airflow 3; plain labels work the same

        def lazy_gettext(text: str) -> str:  # type: ignore[misc]
            return text

    widgets: dict[str, Any] = {}
    for name, spec in CONN_FIELDS.items():
        types = spec["schema"]["type"]
        kwargs: dict[str, Any] = {"description": spec.get("description"), "validators": [Optional()]}
        if "default" in spec["schema"]:
            kwargs["default"] = spec["schema"]["default"]
        if "number" in types or "integer" in types:
            from wtforms import DecimalField, IntegerField

            field_class = IntegerField if "integer" in types else DecimalField
            widgets[name] = field_class(lazy_gettext(spec["label"]), **kwargs)
        else:
            widgets[name] = StringField(lazy_gettext(spec["label"]), **kwargs)
    return widgets
