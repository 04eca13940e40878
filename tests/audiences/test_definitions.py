"""Segment definitions: loading a directory of YAML files, and errors that name the file, the path
in the rule tree and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiences.definitions import load_segments
from audiences.errors import DefinitionError
from collector.categories import ContentTaxonomy

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HOST = "{where: [{field: host, op: eq, value: a.com}]}"
RULE = "id: 1\nname: x\nrule: "  # a segment, up to its rule


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_directory_loads_single_segments_and_lists(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", f"id: 1\nname: one\nrule: {HOST}\n")
    write(tmp_path, "more.yml", f"- {{id: 2, name: two, rule: {HOST}}}\n"
                                "- {id: 3, name: three, rule: {segment: 1}}\n")
    write(tmp_path, "notes.txt", "not a definition")
    assert sorted(load_segments(tmp_path).by_id) == [1, 2, 3]


@pytest.mark.parametrize(("text", "where", "problem"), [
    (RULE + "{where: [{field: colour, op: eq, value: red}]}\n", "rule.where.0", "unknown field 'colour'"),
    (RULE + "{all: [{where: [{field: host, op: regex, value: 'a{2000}'}]}]}\n",
     "rule.all.0.where.0", "invalid regex (RE2"),
    (RULE + "{where: [{field: url, op: regex, value: 'a*+'}]}\n", "rule.where.0", "bad repetition"),
    (RULE + "{where: [{field: url, op: regex, value: '(?=a)'}]}\n", "rule.where.0", "no look-arounds"),
    (RULE + "{not: {where: [{field: host, op: gt, value: a}]}}\n", "rule.not.where.0.op", "Input should be 'eq'"),
    ("id: 1\nname: x\nttl_days: -1\nrule: " + HOST + "\n", "ttl_days", "greater than"),
    (RULE + "{where: [], within_days: 7, min_days: 9}\n", "rule", "more than the 8 dates"),
    # Without a window of its own, a condition has the segment's lookback.
    ("id: 1\nname: x\nlookback_days: 7\nrule: {all: [{where: [], min_days: 30}]}\n", "(top)",
     "at rule.all.0: min_days 30 is more than the 8 dates a lookback of 7 days"),
    # Bounds are bound as UInt64, which wraps: 2^64 + 1 meant 1.
    (RULE + "{where: [], min_count: 18446744073709551617}\n", "rule.min_count", "less than or equal to 1000000"),
    (RULE + "{where: [], min_engaged_ms: 99999999999999999999}\n", "rule.min_engaged_ms", "less than or equal"),
    # Paths without pydantic's tags: within_days sits beside `not`, not in it; an item of a list.
    (RULE + "{not: " + HOST + ", within_days: 7}\n", "rule.within_days", "Extra inputs are not permitted"),
    (RULE + "{segment: 2, min_count: 2}\n", "rule.min_count", "Extra inputs are not permitted"),
    (RULE + "{where: [{field: host, op: eq, value: 533}]}\n", "rule.where.0.value", "a valid string"),
    (RULE + "{where: [{field: host, op: in, value: [a.com, 7]}]}\n", "rule.where.0.value.1", "a valid string"),
    # A lone surrogate encodes to no UTF-8: it failed the build's statement.
    (RULE + '{where: [{field: host, op: eq, value: "x\\ud800"}]}\n', "rule.where.0.value", "lone surrogate"),
    ('id: 1\nname: "\\udfff"\nrule: ' + HOST + "\n", "name", "valid string"),  # pydantic's own check
    ('id: 1\nname: x\ndescription: "\\udfff"\nrule: ' + HOST + "\n", "description", "lone surrogate"),
    # Nested deeper than ClickHouse parses (its depth 1000 was reached near 190 levels).
    (RULE + "{not: " * 40 + HOST + "}" * 40 + "\n", "(top)", "at rule" + ".not" * 32 + ": rules nest 32 deep"),
])
def test_an_invalid_definition_names_its_file_the_path_and_the_problem(
        tmp_path: Path, text: str, where: str, problem: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(DefinitionError) as error:
        load_segments(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: at {where}")
    assert problem in message


@pytest.mark.parametrize("pattern", ["^/\\p{Greek}+/", "(?<y>\\d{4})", "^C:\\\\1"])
def test_what_re2_takes_is_accepted(tmp_path: Path, pattern: str) -> None:
    # A Unicode class Python's re lacks, a named group, an escaped backslash before a digit.
    write(tmp_path, "s.yaml", RULE + f"{{where: [{{field: path, op: regex, value: '{pattern}'}}]}}\n")
    assert load_segments(tmp_path).by_id[1].rule.where[0].value == pattern


def test_a_window_of_n_days_takes_min_days_up_to_n_plus_1(tmp_path: Path) -> None:
    write(tmp_path, "s.yaml", RULE + "{where: [], within_days: 1, min_days: 2}\n")  # yesterday and today
    assert load_segments(tmp_path).by_id[1].rule.min_days == 2


def test_a_segment_of_a_list_is_named_by_its_index(tmp_path: Path) -> None:
    path = write(tmp_path, "list.yaml", f"- {{id: 1, name: one, rule: {HOST}}}\n- {{id: 2, rule: {HOST}}}\n")
    with pytest.raises(DefinitionError, match=rf"^{path}\[1\]: at name: Field required"):
        load_segments(tmp_path)


def test_yaml_and_encoding_errors_name_the_file(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "id: [1\n")
    with pytest.raises(DefinitionError, match=r"broken\.yaml: not valid YAML"):
        load_segments(tmp_path)
    (tmp_path / "broken.yaml").unlink()
    (tmp_path / "latin.yaml").write_bytes("id: 1\nname: caf\xe9\nrule: {}\n".encode("latin-1"))
    with pytest.raises(DefinitionError, match=r"latin\.yaml: not UTF-8 text"):
        load_segments(tmp_path)


def test_errors_between_segments_name_the_files_involved(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", f"id: 5\nname: a\nrule: {HOST}\n")
    second = write(tmp_path, "b.yaml", f"id: 5\nname: b\nrule: {HOST}\n")
    with pytest.raises(DefinitionError, match=rf"^{second}: segment id 5 is defined twice \(also in {first}\)"):
        load_segments(tmp_path)
    write(tmp_path, "b.yaml", "id: 6\nname: b\nrule: {segment: 99}\n")
    with pytest.raises(DefinitionError, match=rf"^{second}: segment 6 refers to unknown segment 99"):
        load_segments(tmp_path)


def test_references_that_form_a_cycle_are_rejected_at_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "id: 1\nname: a\nrule: {all: [{segment: 2}]}\n")
    write(tmp_path, "b.yaml", "id: 2\nname: b\nrule: {not: {segment: 3}}\n")
    write(tmp_path, "c.yaml", "id: 3\nname: c\nrule: {any: [{segment: 1}]}\n")
    with pytest.raises(DefinitionError, match=r"a\.yaml: segment references form a cycle: 1 -> 2 -> 3 -> 1"):
        load_segments(tmp_path)


def test_a_missing_or_empty_directory_is_an_error_not_zero_segments(tmp_path: Path) -> None:
    # Zero segments would exit every member, and activation would remove them all from partners.
    with pytest.raises(DefinitionError, match="no such directory"):
        load_segments(tmp_path / "segmnets")
    write(tmp_path, "README.md", "segments go here")
    with pytest.raises(DefinitionError, match="no segment definitions"):
        load_segments(tmp_path)
    assert load_segments(tmp_path, allow_empty=True).by_id == {}  # what reads pass: nothing to lose


def test_iab_audience_ids_are_checked_against_the_taxonomy(tmp_path: Path) -> None:
    audience_ids = frozenset(ContentTaxonomy.load(SHARED_DATA / "iab-audience-taxonomy-1.1.tsv").names)
    path = write(tmp_path, "s.yaml", f"id: 1\nname: s\niab_audience_id: '2'\nrule: {HOST}\n")
    assert load_segments(tmp_path, audience_ids).by_id[1].iab_audience_id == "2"  # Demographic | Age Range
    write(tmp_path, "s.yaml", f"id: 1\nname: s\niab_audience_id: '999999'\nrule: {HOST}\n")
    with pytest.raises(DefinitionError, match=rf"^{path}: iab_audience_id '999999' is not in the taxonomy"):
        load_segments(tmp_path, audience_ids)


def test_a_key_given_twice_is_an_error_not_the_last_one(tmp_path: Path) -> None:
    # Two segments without their list markers read as one mapping: PyYAML kept the second alone.
    path = write(tmp_path, "s.yaml", f"id: 1\nname: one\nrule: {HOST}\nid: 2\nname: two\nrule: {HOST}\n")
    with pytest.raises(DefinitionError, match=f"^{path}: not valid YAML at line 4, column 1: key 'id' given twice"):
        load_segments(tmp_path)


def test_a_file_nested_too_deeply_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "[" * 2000 + "]" * 2000 + "\n")
    with pytest.raises(DefinitionError, match=f"^{path}: nested too deeply"):
        load_segments(tmp_path)


def test_files_of_empty_lists_are_no_definitions(tmp_path: Path) -> None:
    # A build of none exits every member: only reads may take an empty set.
    write(tmp_path, "s.yaml", "[]\n")
    with pytest.raises(DefinitionError, match="no segment definitions"):
        load_segments(tmp_path)
    assert not load_segments(tmp_path, allow_empty=True).by_id


def test_hidden_files_are_not_read(tmp_path: Path) -> None:
    # An editor's lock link to a file being edited (Emacs' `.#s.yaml`) is dangling.
    write(tmp_path, "s.yaml", f"id: 1\nname: one\nrule: {HOST}\n")
    (tmp_path / ".#s.yaml").symlink_to("user@host.1234:1700000000")
    assert sorted(load_segments(tmp_path).by_id) == [1]


def test_aliases_are_refused(tmp_path: Path) -> None:
    # Aliases of aliases: a few lines, a rule of 100^4 nodes that validation walked one by one.
    levels = ["a0: &a0 {where: []}"]
    levels += [f"a{n}: &a{n} {{all: [{', '.join([f'*a{n - 1}'] * 100)}]}}" for n in (1, 2, 3, 4)]
    path = write(tmp_path, "s.yaml", "\n".join(levels) + "\n")
    with pytest.raises(DefinitionError, match=f"^{path}: not valid YAML at line 2, column 16: aliases"):
        load_segments(tmp_path)


@pytest.mark.parametrize(("text", "problem"), [
    ("? [a, b]\n: 1\n", "found unhashable key"),  # the base loader's own refusal, not a TypeError
    ("{[1]: 2}\n", "found unhashable key"),
])
def test_keys_that_are_lists_are_an_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(DefinitionError, match=f"^{path}: not valid YAML.*{problem}"):
        load_segments(tmp_path)


def test_a_merge_key_gives_defaults_that_later_keys_override(tmp_path: Path) -> None:
    write(tmp_path, "s.yaml", f"<<: {{id: 1, name: default}}\nname: one\nrule: {HOST}\n")
    assert load_segments(tmp_path).by_id[1].name == "one"


def test_references_deeper_than_32_are_refused_at_load(tmp_path: Path) -> None:
    # Each level of references is a query level of the build's statement: 100 failed the build.
    chain = [f"- {{id: 1, name: s1, rule: {HOST}}}"] + [
        f"- {{id: {n}, name: s{n}, rule: {{segment: {n - 1}}}}}" for n in range(2, 35)]
    write(tmp_path, "s.yaml", "\n".join(chain[:33]) + "\n")
    assert len(load_segments(tmp_path).by_id) == 33  # 32 deep
    path = write(tmp_path, "s.yaml", "\n".join(chain) + "\n")
    with pytest.raises(DefinitionError, match=f"^{path}\\[33\\]: segment 34 refers to segments 33 deep; at most 32"):
        load_segments(tmp_path)
