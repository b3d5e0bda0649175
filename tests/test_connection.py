"""The ``unpod`` Airflow connection: reading it, validating it, and the form Airflow shows for it."""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from unpod_provider import __version__
from unpod_provider.connection_form import CONN_FIELDS, HOOK_CLASS_NAME
from unpod_provider.exceptions import UnpodConfigError
from unpod_provider.get_provider_info import get_provider_info
from unpod_provider.hooks.unpod import UnpodHook, config_from_connection
from unpod_provider.protocol import ClientConfig

TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def set_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def setter(conn_id: str = "unpod_default", **conn: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "unpod", **conn}))

    return setter


def config_of(conn_id: str = "unpod_default", **kwargs: Any) -> ClientConfig:
    return UnpodHook(conn_id, **kwargs).config


# --------------------------------------------------------------------------------------------
# Reading the connection
# --------------------------------------------------------------------------------------------


def test_connection_from_the_environment_json(set_conn: Any) -> None:
    set_conn(host="http://127.0.0.1:8765", password=TOKEN, extra={"org_handle": "acme"})
    config = config_of()
    assert config.base_url == "http://127.0.0.1:8765"
    assert config.token == TOKEN
    assert config.org_handle == "acme"
    assert config.auth_scheme == "Token"
    assert config.timeout == 30.0
    assert config.verify is True
    assert config.allow_insecure_http is False
    assert config.conn_id == "unpod_default"
    assert config.url("/api/v2/platform/spaces/") == "http://127.0.0.1:8765/api/v2/platform/spaces/"


def test_connection_from_a_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_URI", f"unpod://:{TOKEN}@unpod.example.com/?org_handle=acme.com")
    config = config_of("unpod_uri")
    assert config.base_url == "https://unpod.example.com"
    assert (config.token, config.org_handle) == (TOKEN, "acme.com")


@pytest.mark.parametrize("host", [None, "", "   "])
def test_empty_host_means_the_public_service(set_conn: Any, host: str | None) -> None:
    set_conn(host=host, password=TOKEN, extra={"org_handle": "acme"})
    assert config_of().base_url == "https://unpod.ai"


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        ("unpod.dev", "https://unpod.dev"),
        ("https://unpod.ai/", "https://unpod.ai"),
        ("https://unpod.ai/api/v2/platform/", "https://unpod.ai"),
        ("http://localhost:3001", "http://localhost:3001"),
        ("https://user:pw@unpod.example.com", "https://unpod.example.com"),
    ],
)
def test_host_is_normalised_to_a_base_url(set_conn: Any, host: str, base_url: str) -> None:
    set_conn(host=host, password=TOKEN, extra={"org_handle": "acme"})
    assert config_of().base_url == base_url


def test_port_field_is_added_to_a_host_without_one(set_conn: Any) -> None:
    set_conn(host="localhost", schema="http", port=3001, password=TOKEN, extra={"org_handle": "acme"})
    assert config_of().base_url == "http://localhost:3001"


@pytest.mark.parametrize("host", ["ftp://unpod.ai", "https://", "https://un pod.ai"])
def test_bad_host_is_a_config_error(set_conn: Any, host: str) -> None:
    set_conn(host=host, password=TOKEN, extra={"org_handle": "acme"})
    with pytest.raises(UnpodConfigError, match="Connection 'unpod_default': host"):
        config_of()


@pytest.mark.parametrize("password", [None, "", "   "])
def test_missing_token_names_the_connection_and_the_field(set_conn: Any, password: str | None) -> None:
    set_conn("my_unpod", host="https://unpod.ai", password=password, extra={"org_handle": "acme"})
    with pytest.raises(UnpodConfigError) as info:
        config_of("my_unpod")
    assert "Connection 'my_unpod'" in str(info.value)
    assert "API token missing" in str(info.value)
    assert "password" in str(info.value)


@pytest.mark.parametrize("extra", [None, {}, {"org_handle": ""}, {"org_handle": "  "}, {"org_handle": None}])
def test_missing_org_handle_names_the_connection_and_the_field(set_conn: Any, extra: Any) -> None:
    set_conn("my_unpod", host="https://unpod.ai", password=TOKEN, extra=extra)
    with pytest.raises(UnpodConfigError) as info:
        config_of("my_unpod")
    assert "Connection 'my_unpod'" in str(info.value)
    assert "org_handle" in str(info.value)
    assert TOKEN not in str(info.value)


def test_old_style_extra_names_are_accepted(set_conn: Any) -> None:
    set_conn(
        password=TOKEN,
        extra={"extra__unpod__org_handle": "acme", "extra__unpod__auth_scheme": "Bearer"},
    )
    config = config_of()
    assert (config.org_handle, config.auth_scheme) == ("acme", "Bearer")


def test_org_handle_is_stripped(set_conn: Any) -> None:
    set_conn(password=f"  {TOKEN} ", extra={"org_handle": " acme.com "})
    config = config_of()
    assert (config.token, config.org_handle) == (TOKEN, "acme.com")


@pytest.mark.parametrize("scheme", ["Basic", "token2", "Bearer x"])
def test_unknown_auth_scheme_is_refused(set_conn: Any, scheme: str) -> None:
    set_conn(password=TOKEN, extra={"org_handle": "acme", "auth_scheme": scheme})
    with pytest.raises(UnpodConfigError, match="auth_scheme must be one of Token, Bearer, JWT"):
        config_of()


def test_timeout_extra_and_hook_argument(set_conn: Any) -> None:
    set_conn(password=TOKEN, extra={"org_handle": "acme", "timeout": "12.5"})
    assert config_of().timeout == 12.5
    assert config_of().connect_timeout == 10.0
    assert config_of(timeout=3).timeout == 3.0
    assert config_of(timeout=3).connect_timeout == 3.0


@pytest.mark.parametrize("timeout", ["soon", 0, -1, 7200, "nan"])
def test_bad_timeout_extra_is_refused(set_conn: Any, timeout: Any) -> None:
    set_conn(password=TOKEN, extra={"org_handle": "acme", "timeout": timeout})
    with pytest.raises(UnpodConfigError, match="timeout"):
        config_of()


@pytest.mark.parametrize(("name", "value"), [("verify", "maybe"), ("allow_insecure_http", 2)])
def test_bad_boolean_extras_are_refused(set_conn: Any, name: str, value: Any) -> None:
    set_conn(password=TOKEN, extra={"org_handle": "acme", name: value})
    with pytest.raises(UnpodConfigError, match=name):
        config_of()


@pytest.mark.parametrize(
    ("field", "value"),
    [("password", TOKEN + "\r\nX-Evil: 1"), ("org_handle", "acme\nX-Evil: 1")],
)
def test_header_injection_is_refused(set_conn: Any, field: str, value: str) -> None:
    if field == "password":
        set_conn(password=value, extra={"org_handle": "acme"})
    else:
        set_conn(password=TOKEN, extra={"org_handle": value})
    with pytest.raises(UnpodConfigError, match="control character") as info:
        config_of()
    assert TOKEN not in str(info.value)


def test_plain_http_refusal_names_the_connection(set_conn: Any) -> None:
    set_conn("prod_unpod", host="http://unpod.example.com", password=TOKEN, extra={"org_handle": "a"})
    with pytest.raises(UnpodConfigError, match="Connection 'prod_unpod': refusing") as info:
        config_of("prod_unpod")
    assert TOKEN not in str(info.value)


def test_broken_extra_is_a_config_error() -> None:
    class Conn:
        host = "https://unpod.ai"
        password = TOKEN
        port = None
        schema = None

        @property
        def extra_dejson(self) -> dict[str, Any]:
            raise ValueError("not JSON")

    with pytest.raises(UnpodConfigError, match="Connection 'c1': extra is not valid JSON"):
        config_from_connection(Conn(), conn_id="c1")


def test_unknown_connection_id_is_an_airflow_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_UNPOD_NOWHERE", raising=False)
    with pytest.raises(Exception, match="unpod_nowhere"):
        config_of("unpod_nowhere")


def test_config_repr_and_headers() -> None:
    config = ClientConfig.from_connection_fields(
        conn_id="c",
        host="https://unpod.ai",
        password=TOKEN,
        extra={"org_handle": "acme", "auth_scheme": "jwt"},
    )
    assert TOKEN not in repr(config)
    assert config.headers() == {
        "Authorization": f"JWT {TOKEN}",
        "Org-Handle": "acme",
        "Accept": "application/json",
        "User-Agent": f"airflow-provider-unpod/{__version__}",
    }


# --------------------------------------------------------------------------------------------
# The connection form
# --------------------------------------------------------------------------------------------


def connection_type_info() -> dict[str, Any]:
    (info,) = get_provider_info()["connection-types"]
    return info


def test_provider_info_names_the_hook() -> None:
    info = connection_type_info()
    assert info["connection-type"] == UnpodHook.conn_type == "unpod"
    assert info["hook-name"] == UnpodHook.hook_name == "Unpod"
    assert info["hook-class-name"] == HOOK_CLASS_NAME
    module, _, name = info["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is UnpodHook
    assert get_provider_info()["package-name"] == "airflow-provider-unpod"
    assert get_provider_info()["versions"][0] == __version__


def test_provider_info_form_agrees_with_the_hook_methods() -> None:
    info = connection_type_info()
    behaviour = UnpodHook.get_ui_field_behaviour()
    ui = info["ui-field-behaviour"]
    assert ui["hidden-fields"] == behaviour["hidden_fields"]
    assert ui["relabeling"] == behaviour["relabeling"]
    assert ui["placeholders"] == behaviour["placeholders"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Token"}
    assert "password" not in behaviour["hidden_fields"] and "host" not in behaviour["hidden_fields"]

    widgets = UnpodHook.get_connection_form_widgets()
    assert set(widgets) == set(info["conn-fields"]) == {"org_handle", "auth_scheme", "timeout"}
    for name, field in info["conn-fields"].items():
        widget = widgets[name]
        assert str(widget.args[0]) == field["label"]
        assert widget.kwargs["description"] == field["description"]
        if "default" in field["schema"]:
            assert widget.kwargs["default"] == field["schema"]["default"]
    # Every extra named by a placeholder is a real field.
    extra_placeholders = set(behaviour["placeholders"]) - {"host", "password", "login", "schema", "port"}
    assert extra_placeholders <= set(CONN_FIELDS)


def test_form_widgets_bind_in_a_wtforms_form() -> None:
    from wtforms import Form

    form_class = type("UnpodForm", (Form,), UnpodHook.get_connection_form_widgets())
    form = form_class(data={"org_handle": "acme", "timeout": 12})
    assert form.validate()
    assert form.data["org_handle"] == "acme"
    assert float(form.data["timeout"]) == 12.0
    assert form.data["auth_scheme"] == "Token"


def test_conn_fields_are_valid_json_schema_types() -> None:
    for spec in connection_type_info()["conn-fields"].values():
        types = spec["schema"]["type"]
        assert "null" in types  # optional in the form; the hook reports what is missing
        if "enum" in spec["schema"]:
            assert spec["schema"].get("default") in spec["schema"]["enum"]


@pytest.fixture
def providers_manager() -> Any:
    from airflow.providers_manager import ProvidersManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager = ProvidersManager()
        manager.initialize_providers_hooks()
    return manager


def test_airflow_discovers_the_provider(providers_manager: Any) -> None:
    provider = providers_manager.providers["airflow-provider-unpod"]
    assert provider.version == __version__
    assert provider.data["name"] == "Unpod"


def test_airflow_maps_the_unpod_connection_type_to_the_hook(providers_manager: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hook_info = providers_manager.hooks["unpod"]
        behaviours = providers_manager.field_behaviours["unpod"]
        widgets = providers_manager.connection_form_widgets
    assert hook_info.hook_class_name == "unpod_provider.hooks.unpod.UnpodHook"
    assert hook_info.hook_name == "Unpod"
    assert hook_info.connection_id_attribute_name == "unpod_conn_id"
    assert hook_info.package_name == "airflow-provider-unpod"
    assert hook_info.connection_testable is True
    assert behaviours["relabeling"] == {"host": "Base URL", "password": "API Token"}
    assert behaviours["hidden_fields"] == ["schema", "port", "login"]
    assert {k for k in widgets if k.startswith("extra__unpod__")} == {
        "extra__unpod__org_handle",
        "extra__unpod__auth_scheme",
        "extra__unpod__timeout",
    }
    assert widgets["extra__unpod__org_handle"].hook_class_name == "unpod_provider.hooks.unpod.UnpodHook"
