from pathlib import Path

import pytest

from collector.categories import BUILTIN
from collector.sites import SitesConfig, SitesConfigError, load_sites

GOOD = """
sites:
  shop-example:
    origins: ["https://shop.example.com", "https://WWW.Shop.Example.com/"]
    categories:
      - match: "^/sports/soccer"
        ids: ["533"]
      - match: "^/sports"
        ids: ["483", "533"]
  blog.example:
    origins: ["http://localhost:8000"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def config(tmp_path: Path) -> SitesConfig:
    return load_sites(write(tmp_path, GOOD), BUILTIN)


@pytest.mark.parametrize(("site", "known"), [
    ("shop-example", True), ("blog.example", True), ("other", False), ("", False), ("Shop-Example", False),
])
def test_known(config: SitesConfig, site: str, known: bool) -> None:
    assert config.known(site) is known


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://shop.example.com", True),
    ("https://www.shop.example.com", True),
    ("HTTPS://SHOP.EXAMPLE.COM", True),
    ("http://localhost:8000", True),
    ("http://shop.example.com", False),
    ("https://shop.example.com.evil.com", False),
    ("http://localhost:8001", False),
    ("null", False),
    ("", False),
])
def test_origin_allowed(config: SitesConfig, origin: str, allowed: bool) -> None:
    assert config.origin_allowed(origin) is allowed


def test_rules(config: SitesConfig) -> None:
    rules = config.rules()
    assert rules is config.rules()
    assert rules.categories_for("shop-example", "/sports/soccer/boots") == ("533", "483")
    assert rules.categories_for("shop-example", "/sports/golf") == ("483", "533")
    assert rules.categories_for("blog.example", "/sports") == ()


def test_no_file_is_the_open_config() -> None:
    config = load_sites(None, BUILTIN)
    assert config.known("anything") and config.origin_allowed("https://anywhere.example")
    assert config.rules().categories_for("anything", "/sports") == ()


def test_without_a_taxonomy_only_the_id_form_is_checked(tmp_path: Path) -> None:
    text = GOOD.replace('["533"]', '["999999"]')
    rules = load_sites(write(tmp_path, text), None).rules()
    assert rules.categories_for("shop-example", "/sports/soccer")[0] == "999999"


@pytest.mark.parametrize(("text", "where"), [
    ("", "non-empty 'sites'"),
    ("sites: {}", "non-empty 'sites'"),
    ("- a\n- b", "non-empty 'sites'"),
    ("sites: [unclosed", "not valid YAML"),
    ("sites:\n  s:\n    origins: [shop.example.com]", "s.origins.0: 'shop.example.com' is not an origin"),
    ("sites:\n  s:\n    origins: ['https://x.com/path']", "sites.s.origins.0"),
    ("sites:\n  s:\n    categories: [{match: '^/(a', ids: ['1']}]", "0.match: not a valid regular"),
    ("sites:\n  s:\n    categories: [{match: '^/a', ids: ['1', '999999']}]", "0.ids: '999999' is not in"),
    ("sites:\n  s:\n    categories: [{match: '^/a', ids: ['5 3']}]", "0.ids: '5 3' is not a category"),
    ("sites:\n  s:\n    categories: [{match: '^/a', ids: []}]", "sites.s.categories.0.ids"),
    ("sites:\n  s:\n    categories: [{match: '^/a'}]", "sites.s.categories.0.ids: Field required"),
    ("sites:\n  s:\n    origin: ['https://x.com']", "sites.s.origin: Extra inputs are not permitted"),
    ("sites:\n  'bad site!':\n    origins: []", "sites.bad site!"),
    ("sites:\n  s: 5", "sites.s"),
])
def test_errors_name_the_file_and_the_place(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SitesConfigError) as raised:
        load_sites(path, BUILTIN)
    assert str(raised.value).startswith(f"{path}: ")
    assert where in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SitesConfigError, match="cannot read"):
        load_sites(tmp_path / "nope.yaml", None)


def test_sites_config_error_is_a_value_error() -> None:
    assert issubclass(SitesConfigError, ValueError)
