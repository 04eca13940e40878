from pathlib import Path

import pytest

from collector.categories import (
    BUILTIN,
    MAX_CATEGORIES,
    CategoryRules,
    ContentTaxonomy,
    TaxonomyError,
    clean_categories,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def content() -> ContentTaxonomy:
    return ContentTaxonomy.load(SHARED_DATA / "iab-content-taxonomy-3.1.tsv")


def test_the_real_file_loads_whole(content: ContentTaxonomy) -> None:
    assert len(content) == 704
    assert {"483", "533", "JLBCU7", "v9i3On"} <= set(content.names)


@pytest.mark.parametrize(("node", "name", "parent", "ancestors", "label"), [
    ("483", "Sports", None, (), "Sports"),
    ("533", "Soccer", "483", ("483",), "Sports > Soccer"),
    ("3", "Commercial Trucks", "2", ("1", "2"), "Automotive > Auto Body Styles > Commercial Trucks"),
    ("338", "Music", "JLBCU7", ("JLBCU7",), "Entertainment > Music"),
])
def test_taxonomy_lookups(
    content: ContentTaxonomy, node: str, name: str, parent: str | None, ancestors: tuple[str, ...],
    label: str,
) -> None:
    assert (content.name(node), content.parent(node), content.ancestors(node), content.label(node)) == (
        name, parent, ancestors, label,
    )


def test_descendants_include_the_node_and_every_level_below(content: ContentTaxonomy) -> None:
    automotive = content.descendants("1")
    assert {"1", "2", "3", "27", "30"} <= automotive
    assert "483" not in automotive
    assert content.descendants("533") == {"533"}
    assert all(content.ancestors(node)[:1] in ((), ("1",)) for node in automotive)


def test_unknown_ids(content: ContentTaxonomy) -> None:
    assert "999999" not in content and 483 not in content
    assert content.label("999999") == "999999"
    with pytest.raises(KeyError):
        content.name("999999")


def test_every_builtin_entry_is_real(content: ContentTaxonomy) -> None:
    assert len(BUILTIN) >= 30
    for node in BUILTIN.names:
        assert (BUILTIN.name(node), BUILTIN.parent(node)) == (content.name(node), content.parent(node)), node


def test_builtin_covers_the_demo_verticals() -> None:
    tops = {BUILTIN.name(node) for node in BUILTIN.names if BUILTIN.parent(node) is None}
    assert {"Sports", "Automotive", "Travel", "Food & Drink", "Technology & Computing", "Personal Finance",
            "Style & Fashion", "Home & Garden", "Video Gaming", "Entertainment"} <= tops


@pytest.mark.parametrize(("text", "error"), [
    ("Name\tParent\n1\t\tA\n", "Unique ID"),
    ("Unique ID\tParent\tName\n1\t\tA\n2\t9\tB\n", "parent 9"),
    ("Unique ID\tParent\tName\n1\t2\tA\n2\t1\tB\n", "cycle"),
    ("Unique ID\tParent\tName\n1\t\tA\n1\t\tB\n", "twice"),
    ("Unique ID\tParent\tName\n1\n", "line 2"),
])
def test_bad_taxonomy_files_name_the_file(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "taxonomy.tsv"
    path.write_text(text)
    with pytest.raises(TaxonomyError, match=error) as raised:
        ContentTaxonomy.load(path)
    assert str(path) in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="missing.tsv"):
        ContentTaxonomy.load(tmp_path / "missing.tsv")


RULES = CategoryRules({
    "shop": [("^/sports/soccer", ["533", "483"]), ("boots", ["533", "552"]), ("^/sports", ["483"])],
    "news": [(r"^/auto(/|$)", ["1"])],
})


@pytest.mark.parametrize(("site", "path", "ids"), [
    ("shop", "/sports/soccer/boots", ("533", "483", "552")),
    ("shop", "/sports/tennis", ("483",)),
    ("shop", "/sale/boots", ("533", "552")),
    ("shop", "/", ()),
    ("news", "/auto", ("1",)),
    ("news", "/automation", ()),
    ("news", "/sports/soccer", ()),  # rules belong to their site
    ("unknown", "/sports", ()),
])
def test_categories_for(site: str, path: str, ids: tuple[str, ...]) -> None:
    assert RULES.categories_for(site, path) == ids


def test_categories_for_is_cached_per_instance() -> None:
    rules = CategoryRules({"s": [("x", ["1"])]})
    rules.categories_for("s", "/x")
    rules.categories_for("s", "/x")
    info = rules.categories_for.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert CategoryRules({}).categories_for.cache_info().currsize == 0


@pytest.mark.parametrize(("ids", "with_taxonomy", "kept"), [
    (["533", "483"], True, ("533", "483")),
    (["533", "533", "483", "533"], True, ("533", "483")),
    (["533", "999999", "483"], True, ("533", "483")),
    (["533", "999999"], False, ("533", "999999")),
    (["", "5 3", "a" * 17, "ünï", "533;DROP", 533, None], False, ()),
    (["JLBCU7", "jlbcu7"], True, ("JLBCU7",)),
])
def test_clean_categories(ids: list[object], with_taxonomy: bool, kept: tuple[str, ...]) -> None:
    assert clean_categories(ids, BUILTIN if with_taxonomy else None) == kept  # type: ignore[arg-type]


def test_clean_categories_keeps_at_most_twenty() -> None:
    many = [str(n) for n in range(1000)] * 2
    assert clean_categories(many, None) == tuple(str(n) for n in range(MAX_CATEGORIES))
