"""Settings: `CRUMB_*` environment variables, read once into one validated model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "CRUMB_"


class SettingsError(Exception):
    """A setting has a value Crumb cannot start with; the message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Path(".crumb")
    clickhouse_url: str = ""  # empty: chdb://<data_dir>/clickhouse
    clickhouse_cluster: str = ""  # non-empty: DDL ON CLUSTER with Replicated engines
    redis_url: str = ""  # empty: a redis-server child process under the data dir
    redis_cluster: bool = False  # the URL names a node of a Redis Cluster

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""  # how browsers reach the collector; default http://host:port

    secret_key: SecretStr = SecretStr("")  # signs crumb_id; empty: generated once in the data dir
    admin_token: SecretStr = SecretStr("")  # bearer token for /admin/api; empty: generated
    cookie_domain: str = ""  # e.g. .example.com when served from the site's own subdomain
    cookie_secure: bool = True

    sites_file: Path | None = None  # YAML: sites, their origins and URL category rules
    content_taxonomy_file: Path | None = None  # IAB Content Taxonomy 3.1 TSV
    audience_taxonomy_file: Path | None = None  # IAB Audience Taxonomy 1.1 TSV
    segments_dir: Path | None = None  # YAML segment definitions; `crumb demo` uses the shipped examples
    build_interval_s: int = Field(3600, ge=0)  # how often `crumb serve` builds segments; 0: never
    partners_dir: Path | None = None  # ID sync partners (YAML); unset: the shipped templates, all disabled
    destinations_dir: Path | None = None  # where segments go (YAML)
    sync_interval_s: int = Field(900, ge=0)  # how often `crumb serve` pushes deltas; 0: never
    lookup_api_key: SecretStr = SecretStr("")  # for server callers of /v1/segments?id=
    tcf_vendor_id: int = Field(0, ge=0)  # our GVL ID; 0 = not registered: no vendor consent ever

    events_ttl_days: int = Field(180, ge=1, le=3650)
    # What builds record about members, by when it was recorded: the history's closed intervals,
    # the deltas (what activation reads) and each build's sizes (the reports' trend).
    history_ttl_days: int = Field(400, ge=1, le=3650)
    max_event_age_hours: int = Field(168, ge=0)  # older client timestamps fall back to server time

    flush_rows: int = Field(10_000, ge=1)
    flush_interval_s: float = Field(1.0, gt=0)
    buffer_max_rows: int = Field(200_000, ge=1)  # past this, batches go to the spool, not memory
    dedup_window_s: int = Field(900, ge=0)  # retried event_ids dropped within this window

    @field_validator("clickhouse_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and not url.startswith(("chdb://", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @property
    def warehouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{self.data_dir.resolve() / 'clickhouse'}"

    @property
    def embedded_warehouse(self) -> bool:
        return self.warehouse_url.startswith("chdb://")

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def collector_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read `CRUMB_*` variables (and explicit overrides, e.g. from CLI flags) into Settings."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {
        key[len(ENV_PREFIX):].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and value != ""
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"unknown setting {ENV_PREFIX}{unknown[0].upper()}")
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper()
        raise SettingsError(f"{name}: {first['msg']}") from None
