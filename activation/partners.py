"""ID sync partners: who we match cookies with, read from YAML, and their match URL templates.

A template's macros (PROTOCOLS.md, ID sync):
  ${CRUMB_ID}            our cookie ID, encoded per the partner's `id_encoding`
  ${CALLBACK_URL}        our callback for this partner, URL-encoded (for redirect-style partners
                         such as Xandr's getuid: their own `$UID` placeholder rides inside it)
  ${GDPR}                1 or 0
  ${GDPR_CONSENT_NNN}    the TC string, unmodified; NNN must be the partner's own GVL ID
  ${US_PRIVACY}          the US Privacy string
  ${GPP_STRING_NNN}, ${GPP_SID}   the GPP string and section IDs (empty unless given)
  ${PUSH}                only in `push_url`: the opaque value of the partner's push request
Anything else written `$NAME` (no braces) is the partner's own and is left as it is.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SHIPPED_DIR = Path(__file__).with_name("partners")
MACRO = re.compile(r"\$\{([A-Z0-9_]+)\}")
_CONSENT_MACRO = re.compile(r"(GDPR_CONSENT|GPP_STRING)_(\d+)")
_PLAIN_MACROS = frozenset({"CRUMB_ID", "CALLBACK_URL", "GDPR", "US_PRIVACY", "GPP_SID"})


class PartnerConfigError(Exception):
    """A partner file cannot be used; the message names the file and the field."""

    code = "partner_config"


class Partner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    gvl_id: int = Field(gt=0)
    match_url: str
    uid_param: str = Field(pattern=r"^[A-Za-z0-9_]{1,40}$")  # the callback parameter with the partner's ID
    uid_macro: str = ""  # e.g. Xandr's `$UID`: put in our callback URL for the partner to fill
    null_uids: tuple[str, ...] = ()  # IDs that mean "no user" (Xandr sends 0 for opted-out users)
    id_encoding: Literal["hex", "websafe_base64"] = "hex"
    resync_days: int = Field(7, ge=1, le=365)
    enabled: bool = False
    push_param: str = ""  # a partner-initiated sync carries this parameter (Google: google_push)
    push_url: str = ""  # where we answer a push, with ${PUSH}

    @model_validator(mode="after")
    def _templates(self) -> Partner:
        if self.name == "frame":
            raise ValueError("name: 'frame' is taken by /sync/frame")
        check_template(self.match_url, self.gvl_id, "match_url")
        if bool(self.push_param) != bool(self.push_url):
            raise ValueError("push_param and push_url go together")
        if self.push_url:
            check_template(self.push_url, self.gvl_id, "push_url", extra={"PUSH"})
        if not self.match_url.startswith(("https://", "http://")):
            raise ValueError("match_url must be an http(s) URL")
        return self


def check_template(template: str, gvl_id: int, field: str, extra: frozenset[str] | set[str] = frozenset()) -> None:
    for name in MACRO.findall(template):
        consent = _CONSENT_MACRO.fullmatch(name)
        if consent and int(consent.group(2)) != gvl_id:
            raise ValueError(f"{field}: ${{{name}}} must name the partner's GVL ID {gvl_id}")
        if not consent and name not in _PLAIN_MACROS and name not in extra:
            raise ValueError(f"{field}: unknown macro ${{{name}}}")


def encode_id(cookie_id: str, encoding: str) -> str:
    """Our ID as the partner takes it. Google's google_hm: web-safe base64 of the ID's text form
    (as in Google's own example), so the hosted match data it sends back decodes to our ID."""
    if encoding == "websafe_base64":
        return base64.urlsafe_b64encode(cookie_id.encode("ascii")).decode("ascii")
    return cookie_id


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace each ${MACRO} by its value; values arrive already encoded for a URL."""
    return MACRO.sub(lambda m: values.get(m.group(1), ""), template)


def macro_values(
    partner: Partner, cookie_id: str, *, gdpr: bool, tc_string: str, us_privacy: str, gpp: str, gpp_sid: str,
    callback_url: str = "", push: str = "",
) -> dict[str, str]:
    return {
        "CRUMB_ID": quote(encode_id(cookie_id, partner.id_encoding), safe="="),
        "CALLBACK_URL": quote(callback_url, safe="$"),  # `$` kept: the partner's own macro stays findable
        "PUSH": quote(push, safe=""),
        **consent_macros(partner.gvl_id, gdpr=gdpr, tc_string=tc_string, us_privacy=us_privacy, gpp=gpp,
                         gpp_sid=gpp_sid),
    }


def consent_macros(
    gvl_id: int | None, *, gdpr: bool, tc_string: str, us_privacy: str, gpp: str = "", gpp_sid: str = "",
) -> dict[str, str]:
    """The consent macros, URL-encoded; the vendor-specific ones only for a vendor with a GVL ID."""
    values = {"GDPR": "1" if gdpr else "0", "US_PRIVACY": quote(us_privacy, safe=""),
              "GPP_SID": quote(gpp_sid, safe="")}
    if gvl_id:
        values |= {f"GDPR_CONSENT_{gvl_id}": quote(tc_string, safe=""), f"GPP_STRING_{gvl_id}": quote(gpp, safe="")}
    return values


def load_partners(directory: Path | None) -> dict[str, Partner]:
    """Every partner in the directory's *.yaml / *.yml files (the shipped templates when None)."""
    directory = directory or SHIPPED_DIR
    if not directory.is_dir():
        raise PartnerConfigError(f"{directory}: not a directory")
    partners: dict[str, Partner] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        for partner in _read_file(path):
            if partner.name in partners:
                raise PartnerConfigError(f"{path}: partner {partner.name!r} is defined twice")
            partners[partner.name] = partner
    return partners


def _read_file(path: Path) -> Iterable[Partner]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PartnerConfigError(f"{path}: cannot read: {exc}") from None
    entries = document if isinstance(document, list) else [document]
    partners = []
    for index, entry in enumerate(entries):
        where = f"{path}[{index}]" if isinstance(document, list) else str(path)
        if not isinstance(entry, dict):
            raise PartnerConfigError(f"{where}: a partner must be a mapping")
        try:
            partners.append(Partner(**entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "partner"
            raise PartnerConfigError(f"{where}: {field}: {first['msg']}") from None
    return partners
