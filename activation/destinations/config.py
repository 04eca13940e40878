"""Destinations configured in CRUMB_DESTINATIONS_DIR: one YAML file holds one destination or a list.

    name: ttd-main
    type: ttd                          # ttd | xandr | google | webhook | url
    endpoint: https://use-data.adsrvr.org
    advertiser_id: abc123
    token_env: TTD_AUTH_TOKEN          # or token_file: /run/secrets/ttd (never the token itself)
    partner: ttd                       # the match table partner whose IDs this platform knows
    segments: {101: crumb_soccer_fans} # our segment ID → the platform's segment name or ID
    ttl_minutes: 43200                 # default: the segment's ttl_days
    rate_limit_per_s: 20
    max_concurrency: 4

Secrets come from environment variables *not* prefixed CRUMB_ (settings reject unknown CRUMB_*
names) or from files. Errors name the file and the path inside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from activation.destinations.base import Destination
from activation.destinations.google import GoogleDestination
from activation.destinations.ttd import TTDDestination
from activation.destinations.webhook import WebhookDestination
from activation.destinations.xandr import XandrDestination
from activation.errors import DestinationConfigError  # noqa: F401 - re-exported for callers
from activation.partners import check_template


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    enabled: bool = True
    segments: dict[int, str] = Field(min_length=1)
    ids: Literal["partner", "cookie"] = "partner"  # cookie: our own IDs go out, no match table needed
    partner: str | None = None
    ttl_minutes: int | None = Field(None, ge=1, le=259_200)
    rate_limit_per_s: float = Field(10.0, gt=0)
    max_concurrency: int = Field(1, ge=1, le=32)
    max_attempts: int = Field(5, ge=1, le=20)
    timeout_s: float = Field(30.0, gt=0)
    source: str = ""  # set by the loader: the file it came from

    @model_validator(mode="after")
    def _partner_named(self) -> _Config:
        if self.ids == "partner" and not self.partner and self.type != "url":  # type: ignore[attr-defined]
            raise ValueError("ids: partner needs `partner` (the match table partner name)")
        return self


def _env_name(name: str | None) -> str | None:
    if name is not None and (not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name) or name.startswith("CRUMB_")):
        raise ValueError("an environment variable name, not prefixed CRUMB_ (Crumb's settings own those)")
    return name


class _Secret(BaseModel):
    token_env: str | None = None
    token_file: Path | None = None

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        return _env_name(name)

    @model_validator(mode="after")
    def _one_source(self) -> _Secret:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env (a variable not prefixed CRUMB_) or token_file")
        return self

    def token(self, environ: Mapping[str, str]) -> str:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip()
            except OSError as exc:
                raise DestinationConfigError(f"token_file {self.token_file}: {exc.strerror}") from None
        value = environ.get(self.token_env or "", "")
        if not value:
            raise DestinationConfigError(f"token_env: {self.token_env} is not set")
        return value


class TTDConfig(_Config, _Secret):
    type: Literal["ttd"]
    endpoint: str = "https://use-data.adsrvr.org"
    advertiser_id: str = Field(min_length=1)
    items_per_request: int = Field(1000, ge=1, le=10_000)
    max_concurrency: int = Field(4, ge=1, le=4)  # TTD: at most 4 concurrent callers


class XandrConfig(_Config, _Secret):
    type: Literal["xandr"]
    endpoint: str = "https://api.appnexus.com"
    member_id: int = Field(ge=1)
    max_batch_items: int = Field(100_000, ge=1)
    poll_interval_s: float = Field(5.0, ge=0)
    max_concurrency: int = Field(1, ge=1, le=4)


class GoogleConfig(_Config):
    type: Literal["google"]
    endpoint: str = "https://cm.g.doubleclick.net"
    network_id: str = Field(min_length=1)
    user_id_type: Literal["GOOGLE_USER_ID", "PARTNER_PROVIDED_ID"] = "GOOGLE_USER_ID"
    max_batch_items: int = Field(5000, ge=1)


class WebhookConfig(_Config):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret_env: str | None = None
    secret_file: Path | None = None

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        return _env_name(name)
    ids: Literal["partner", "cookie"] = "cookie"
    max_batch_items: int = Field(1000, ge=1)

    def secret(self, environ: Mapping[str, str]) -> str:
        return _Secret(token_env=self.secret_env, token_file=self.secret_file).token(environ)


class UrlConfig(_Config):
    """A pixel the browser fires for its segments (activation/url_destinations.py): `template`
    takes ${CRUMB_ID}, ${SEGMENTS} and the consent macros of partners.py, filled server-side."""

    type: Literal["url"]
    template: str = Field(pattern=r"^(https://|http://(localhost|127\.0\.0\.1)[:/])")  # plain http: loopback only
    ids: Literal["cookie"] = "cookie"  # a partner's own ID reaches it through ID sync, not here
    gvl_id: int | None = Field(None, gt=0)  # the vendor's; without one it never fires where GDPR applies
    interval_hours: float = Field(24.0, gt=0, le=24 * 365)  # at most one firing per browser per interval

    @model_validator(mode="after")
    def _macros(self) -> UrlConfig:
        check_template(self.template, self.gvl_id or 0, "template", extra={"SEGMENTS"})
        return self


DestinationConfig = Annotated[
    TTDConfig | XandrConfig | GoogleConfig | WebhookConfig | UrlConfig, Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(DestinationConfig)


def load_destinations(directory: Path | None) -> list[Any]:
    """Every `*.yaml` / `*.yml` of the directory; unset means no destinations."""
    if directory is None:
        return []
    configs: list[Any] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        configs.extend(_load_file(path))
    names = [c.name for c in configs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise DestinationConfigError(f"{directory}: destination {duplicate!r} is defined twice")
    return configs


def _load_file(path: Path) -> list[Any]:
    try:
        documents = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DestinationConfigError(f"{path}: not valid YAML: {exc}") from None
    configs = []
    for index, document in enumerate(documents if isinstance(documents, list) else [documents]):
        source = f"{path}" + (f"[{index}]" if isinstance(documents, list) else "")
        try:
            configs.append(_ADAPTER.validate_python({**(document or {}), "source": source}))
        except ValidationError as exc:
            raise DestinationConfigError(f"{source}: {_describe(exc)}") from None
        except TypeError:
            raise DestinationConfigError(f"{source}: a destination is a mapping") from None
    return configs


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"][1:] or first["loc"])  # [0] is the type tag
    return f"{location}: {first['msg']}" if location else first["msg"]


def build_destination(
    config: Any, client: httpx.Client, environ: Mapping[str, str] | None = None,
) -> Destination:
    """A configured server-to-server adapter (not for type url: the browser fires those)."""
    environ = os.environ if environ is None else environ
    try:
        return _build(config, client, environ)
    except DestinationConfigError as exc:
        raise DestinationConfigError(f"{config.source}: {exc}") from None


def _build(config: Any, client: httpx.Client, environ: Mapping[str, str]) -> Destination:
    if isinstance(config, TTDConfig):
        return TTDDestination(config.name, config.endpoint, config.advertiser_id, config.token(environ), client,
                              items_per_request=config.items_per_request)
    if isinstance(config, XandrConfig):
        return XandrDestination(config.name, config.endpoint, config.member_id, config.token(environ), client,
                                max_batch_items=config.max_batch_items, poll_interval_s=config.poll_interval_s)
    if isinstance(config, GoogleConfig):
        return GoogleDestination(config.name, config.endpoint, config.network_id, client,
                                 user_id_type=config.user_id_type, max_batch_items=config.max_batch_items)
    if isinstance(config, WebhookConfig):
        return WebhookDestination(config.name, config.url, config.secret(environ), client,
                                  id_key="cookie_id" if config.ids == "cookie" else "partner_id",
                                  max_batch_items=config.max_batch_items)
    raise DestinationConfigError(f"type {config.type} is fired by the tag, not pushed")
