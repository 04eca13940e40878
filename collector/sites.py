"""The sites config (`CRUMB_SITES_FILE`): which sites may send, from which origins, and URL category rules.

```yaml
sites:
  shop-example:
    origins: ["https://shop.example.com", "https://www.shop.example.com"]
    categories:
      - match: "^/sports/soccer"   # searched in the URL path
        ids: ["533"]
```

No file means an open collector: any site name, any origin, no rules.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from collector.categories import CATEGORY_ID, CategoryRules, ContentTaxonomy

_ORIGIN = re.compile(r"https?://[^/?#@\s]+")


def _normalized_origin(origin: str) -> str:
    # Browsers send the Origin header lowercased and without a path or trailing slash.
    normalized = origin.strip().rstrip("/").lower()
    if not _ORIGIN.fullmatch(normalized):
        raise ValueError(f"{origin!r} is not an origin like https://shop.example.com")
    return normalized


SiteName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Origin = Annotated[str, AfterValidator(_normalized_origin)]


class SitesConfigError(ValueError):
    """A sites file that can't be used; the message names the file and the place in it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryRule(_Model):
    match: str
    ids: list[str] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return pattern

    @field_validator("ids")
    @classmethod
    def _known_ids(cls, ids: list[str], info: ValidationInfo) -> list[str]:
        taxonomy: ContentTaxonomy | None = (info.context or {}).get("taxonomy")
        for category in ids:
            if not CATEGORY_ID.fullmatch(category):
                raise ValueError(f"{category!r} is not a category ID (1-16 letters or digits)")
            if taxonomy is not None and category not in taxonomy:
                raise ValueError(f"{category!r} is not in the content taxonomy")
        return ids


class SiteConfig(_Model):
    origins: list[Origin] = Field(default_factory=list)
    categories: list[CategoryRule] = Field(default_factory=list)


class SitesConfig(_Model):
    sites: dict[SiteName, SiteConfig] = Field(default_factory=dict)

    def known(self, site: str) -> bool:
        return not self.sites or site in self.sites

    def origin_allowed(self, origin: str) -> bool:
        return not self.sites or origin.lower() in self._origins

    def rules(self) -> CategoryRules:
        return self._rules

    @cached_property
    def _origins(self) -> frozenset[str]:
        return frozenset(origin for site in self.sites.values() for origin in site.origins)

    @cached_property
    def _rules(self) -> CategoryRules:
        return CategoryRules({
            name: [(rule.match, rule.ids) for rule in site.categories] for name, site in self.sites.items()
        })


def load_sites(path: Path | None, taxonomy: ContentTaxonomy | None) -> SitesConfig:
    """The sites config from a YAML file (None: the open config); category IDs are checked
    against the taxonomy when one is given."""
    if path is None:
        return SitesConfig()
    document = _read_yaml(path)
    if not isinstance(document, dict) or not document.get("sites"):
        raise SitesConfigError(f"{path}: expected a mapping with a non-empty 'sites' mapping at the top")
    try:
        return SitesConfig.model_validate(document, context={"taxonomy": taxonomy})
    except ValidationError as error:
        raise SitesConfigError(f"{path}: {_describe(error)}") from None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise SitesConfigError(f"{path}: cannot read: {error}") from None
    except yaml.YAMLError as error:
        raise SitesConfigError(f"{path}: not valid YAML: {error}") from None


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg'].removeprefix('Value error, ')}"
        for issue in error.errors()
    )
