"""Bad input to `crumb audiences ...` ends in a one-line error, never a traceback.

Options are checked by the parser; what a command is asked for (segments, days, samples) is
checked again by the commands, which a running server's control endpoint calls as they are.
Segment IDs here are 46xxx.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from activation.errors import ActivationError
from audiences.errors import InvalidRequest, UnknownSegment
from crumb import commands
from crumb.cli import _parser, main
from crumb.commands import checked_args
from crumb.errors import InvalidArguments
from crumb.progress import SILENT
from tests.conftest import LiveServer

CRUMB = [sys.executable, "-m", "crumb.cli"]
EXAMPLES = Path(__file__).resolve().parents[2] / "audiences" / "examples"
SEGMENTS = """
- {id: 46001, name: news readers, rule: {where: [{field: host, op: eq, value: news.r46.example}]}}
- {id: 46002, name: nobody yet, rule: {where: [{field: host, op: eq, value: nowhere.r46.example}]}}
- {id: 46003, name: paused, status: paused, rule: {where: [{field: host, op: eq, value: news.r46.example}]}}
"""
SPORTS = "id: 46010\nname: sports\nrule: {where: [{field: path, op: prefix, value: /sports}]}\n"


@pytest.mark.parametrize(("argv", "error"), [
    (["report", "--overlap", "101,abc"], "argument --overlap: segment IDs"),
    (["report", "--overlap", "101,"], "argument --overlap: segment IDs"),
    (["report", "--overlap", "0,101"], "argument --overlap: segment IDs"),
    (["report", "--segment", "101", "--days", "99999999"], "argument --days: a number of days from 1 to 3650"),
    (["report", "--segment", "101", "--days", "-5"], "argument --days"),
    (["report", "--segment", "101", "--days", "0"], "argument --days"),
    (["preview", "x.yaml", "--sample", "2"], "argument --sample: a share between 0 and 100%"),
    (["preview", "x.yaml", "--sample", "nan"], "argument --sample"),
    (["preview", "x.yaml", "--sample", "0"], "argument --sample"),
    (["preview", "x.yaml", "--sample", "abc"], "argument --sample"),
])
def test_the_parser_refuses_bad_options(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["audiences", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert error in err and "Traceback" not in err


@pytest.mark.parametrize(("argv", "error"), [
    (["audiences", "lookalike", "--seed", "1", "--size", "9", "--lookback-days", "0"],
     "argument --lookback-days: a number of days from 1 to 366, not '0'"),
    (["audiences", "lookalike", "--seed", "1", "--size", "9", "--lookback-days", "367"], "argument --lookback-days"),
    (["activate", "matches", "--days", "0"], "argument --days: a number of days from 1 to 3650, not '0'"),
    (["activate", "matches", "--days", "x"], "argument --days"),
])
def test_the_parser_refuses_days_out_of_range(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 0 used to read as the default, 30.
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)
    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def test_commands_refuse_days_out_of_range(live_server: LiveServer) -> None:
    with pytest.raises(ActivationError, match="1 to 3650 days, not 0"):
        commands.match_rates(live_server.crumb.commands, {"days": 0}, SILENT)
    with pytest.raises(InvalidRequest, match="1 to 366 days, not 0"):
        commands.lookalike(live_server.crumb.commands, {"seed": 46001, "size": 5, "lookback_days": 0}, SILENT)
    assert commands.match_rates(live_server.crumb.commands, {"days": 1}, SILENT)["partners"] is not None


def test_the_parser_reads_good_options() -> None:
    args = _parser().parse_args(["audiences", "report", "--overlap", "101,102", "--days", "3650"])
    assert (args.overlap, args.days) == ([101, 102], 3650)
    assert _parser().parse_args(["audiences", "preview", "x.yaml", "--sample", "5%"]).sample == pytest.approx(0.05)


@pytest.mark.parametrize(("content", "error"), [
    (None, "No such file or directory"),
    ("id: 1\nname: [unclosed\n", "not valid YAML at line 3, column 1"),
    # A YAML date is no JSON: sent to a server as it was, it raised a TypeError's traceback.
    ("id: 1\nname: x\ndescription: 2024-05-01\nrule: {where: []}\n", "at description: Input should be a valid string"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_preview_of_a_file_it_cannot_read_is_a_one_line_error(
        tmp_path: Path, content: str | bytes | None, error: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "draft.yaml"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    assert main(["audiences", "preview", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"crumb: {path}: {error}") and len(err.strip().splitlines()) == 1


@pytest.fixture
def segments_dir(tmp_path: Path) -> Path:
    (tmp_path / "segments.yaml").write_text(SEGMENTS)
    return tmp_path


def report(server: LiveServer, segments_dir: Path, **args: Any) -> dict[str, Any]:
    return commands.report(server.crumb.commands, {"segments_dir": str(segments_dir), **args}, SILENT)


@pytest.mark.parametrize("args", [{"segment": -1}, {"segment": 0}, {"segment": 46999}, {"overlap": [46001, 46999]}])
def test_a_report_of_an_undefined_segment_is_refused(
        live_server: LiveServer, segments_dir: Path, args: dict[str, Any]) -> None:
    with pytest.raises(UnknownSegment, match="no segment"):
        report(live_server, segments_dir, **args)


def test_reads_take_an_empty_segments_directory(live_server: LiveServer, tmp_path: Path) -> None:
    # Only a build refuses one: a build of none would exit every member.
    assert report(live_server, tmp_path)["sizes"] == []
    args = {"segments_dir": str(tmp_path), "definition": {"id": 46010, "name": "x", "rule": {"where": []}}}
    assert commands.preview(live_server.crumb.commands, args, SILENT)["estimate"] >= 0


def test_a_segment_retired_from_the_definitions_keeps_its_trend(live_server: LiveServer, segments_dir: Path) -> None:
    live_server.client.insert("crumb.segment_sizes", [[46998, 1_800_000_000_000, 46998, 7, 9]],
                              column_names=["build_id", "built_at", "segment_id", "profiles", "ids"])
    assert len(report(live_server, segments_dir, segment=46998, days=1)["trend"]) == 1


@pytest.mark.parametrize("days", [0, -5, 99_999_999])
def test_a_trend_of_days_out_of_range_is_refused(live_server: LiveServer, segments_dir: Path, days: int) -> None:
    with pytest.raises(InvalidRequest, match="1 to 3650 days"):
        report(live_server, segments_dir, segment=46001, days=days)


def test_sizes_show_every_active_segment_even_without_members(live_server: LiveServer, segments_dir: Path) -> None:
    sizes = report(live_server, segments_dir)["sizes"]
    assert [(s["segment_id"], s["name"], s["profiles"]) for s in sizes] == [
        (46001, "news readers", 0), (46002, "nobody yet", 0)]


def test_preview_takes_a_sample_of_0_as_given_and_refuses_it(live_server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "saved.yaml").write_text(SEGMENTS)
    args = {"segments_dir": str(tmp_path), "definition": {"id": 46010, "name": "x", "rule": {"where": []}},
            "sample": 0}
    with pytest.raises(InvalidRequest, match="not 0"):
        commands.preview(live_server.crumb.commands, args, SILENT)


def crumb(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUMB_")}
    return subprocess.run([*CRUMB, *argv], env={**env, "CRUMB_DATA_DIR": str(data_dir)}, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize(("argv", "output"), [
    (["audiences", "report", "--segments", str(EXAMPLES)], '"sizes"'),
    (["audiences", "explain", "101", "nobody", "--segments", str(EXAMPLES)], "nobody"),
    (["audiences", "preview", "{file}"], '"estimate": 0'),
    (["audiences", "lookalike", "--seed", "101", "--reach", "5%"], "seed_too_small"),
    (["privacy", "export", "nobody"], '"crumb.events": []'),
])
def test_reads_on_a_data_dir_without_a_build_answer(tmp_path: Path, argv: list[str], output: str) -> None:
    (tmp_path / "draft.yaml").write_text(SPORTS)
    done = crumb(tmp_path / "data", *(a.replace("{file}", str(tmp_path / "draft.yaml")) for a in argv))
    assert done.returncode == 0, done.stderr
    assert output in done.stdout
    if output.startswith('"'):
        json.loads(done.stdout)


@pytest.mark.parametrize(("name", "args", "error"), [
    # A string was read a character at a time as segments 4, 7, 3, 0, 1; a float was truncated.
    ("report", {"overlap": "47301"}, "report: overlap: Input should be a valid list"),
    ("report", {"segment": 47301.9}, "report: segment: Input should be a valid integer"),
    ("report", {"segment": "abc"}, "report: segment: Input should be a valid integer"),
    ("report", {"overlap": [46001, "x"]}, "report: overlap.1: Input should be a valid integer"),
    ("report", {"overlap": list(range(1, 52))}, "report: overlap: an overlap crosses 50 segments at most, not 51"),
    ("report", {"days": 0}, "report: days: Input should be greater than or equal to 1"),
    ("explain", {"segment": 46001}, "explain: cookie_id: Field required"),
    ("erase", {"ids": []}, "erase: ids: List should have at least 1 item after validation, not 0"),
    ("build", {"full": "yes"}, "build: full: Input should be a valid boolean"),
    ("summary", {"colour": 1}, "summary: colour: Extra inputs are not permitted"),
])
def test_command_arguments_not_of_their_kind_are_refused(name: str, args: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidArguments) as refused:
        checked_args(name, args)
    assert str(refused.value) == error


def test_an_overlap_crosses_each_segment_once() -> None:
    assert checked_args("report", {"overlap": [46001, 46002, 46001]}) == {"overlap": [46001, 46002]}


def test_a_taxonomy_file_it_cannot_read_is_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUMB_")}
    missing = tmp_path / "audience-taxonomy.tsv"
    done = subprocess.run([*CRUMB, "audiences", "report", "--segments", str(EXAMPLES)], capture_output=True, text=True,
                          env={**env, "CRUMB_DATA_DIR": str(tmp_path / "data"),
                               "CRUMB_AUDIENCE_TAXONOMY_FILE": str(missing)}, timeout=180)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"crumb: {missing}: No such file or directory"


def test_the_demo_crosses_segments_that_are_defined() -> None:
    # With CRUMB_SEGMENTS_DIR naming one's own definitions, the examples' IDs were looked up: KeyError.
    from audiences.definitions import SegmentSet, load_segments, parse_segment
    from crumb.demo import EXAMPLE_OVERLAP, _overlap_choice

    assert _overlap_choice(load_segments(EXAMPLES)) == EXAMPLE_OVERLAP
    own = SegmentSet([parse_segment({"id": i, "name": f"s{i}", "rule": {"where": []},
                                     "status": "paused" if i == 7 else "active"}) for i in (9, 3, 7, 5, 1, 8)])
    assert _overlap_choice(own) == [1, 3, 5, 8]
