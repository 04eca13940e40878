from pathlib import Path

import pytest

from crumb.settings import SettingsError, load_settings


def test_defaults_use_the_embedded_engines() -> None:
    settings = load_settings({})
    assert settings.embedded_warehouse
    assert settings.warehouse_url == f"chdb://{Path('.crumb').resolve() / 'clickhouse'}"
    assert settings.redis_url == ""


def test_environment_is_read_with_the_prefix() -> None:
    settings = load_settings({"CRUMB_PORT": "9000", "CRUMB_CLICKHOUSE_URL": "http://u:p@ch:8123/crumb", "HOME": "/x"})
    assert settings.port == 9000
    assert not settings.embedded_warehouse


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CRUMB_PORT": "eighty"}, "CRUMB_PORT"),
        ({"CRUMB_PORT": "70000"}, "CRUMB_PORT"),
        ({"CRUMB_CLICKHOUSE_URL": "mysql://x"}, "CRUMB_CLICKHOUSE_URL"),
        ({"CRUMB_REDIS_URL": "http://x"}, "CRUMB_REDIS_URL"),
        ({"CRUMB_EVENTS_TTL_DAYS": "0"}, "CRUMB_EVENTS_TTL_DAYS"),
        ({"CRUMB_FLUSH_ROWZ": "5"}, "CRUMB_FLUSH_ROWZ"),
    ],
)
def test_a_bad_value_names_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(environ)


def test_secrets_stay_out_of_reprs() -> None:
    settings = load_settings({"CRUMB_SECRET_KEY": "hunter2-very-secret", "CRUMB_ADMIN_TOKEN": "tok-123456"})
    assert "hunter2" not in repr(settings) and "tok-123456" not in repr(settings)
    assert settings.secret_key.get_secret_value() == "hunter2-very-secret"
