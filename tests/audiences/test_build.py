"""Builds against the real warehouse: deltas, history, failure isolation, profiles, exclusions.

The warehouse is shared with other tests, so these use timestamps far in the future: only their
own events fall inside their windows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

import audiences.builder as builder
import audiences.incremental as incremental
import audiences.rollup as rollup
from audiences.builder import build
from audiences.compiler import compile_segments
from audiences.definitions import SegmentSet, parse_segment
from audiences.errors import BuildError
from audiences.incremental import WHOLE_HOURS, hour_digests, plan_key
from audiences.jobs import build_due_in
from audiences.schema import MIGRATIONS, OPEN_INTERVAL
from crumb.migrations import Dialect
from crumb.privacy import BUILD_LOCK_KEY, ErasureDeferred, erase
from crumb.progress import Progress
from tests.audiences.events import cookie, insert_events
from tests.conftest import LiveServer

DAY = 86_400_000
T0 = 2_100_000_000_000  # 2036


def insert(client: Client, rows: list[dict[str, Any]]) -> None:
    insert_events(client, rows, site="build-test")


def members(client: Client) -> set[tuple[int, str, str]]:
    return set(client.query("SELECT segment_id, id, id_type FROM crumb.segment_members").result_rows)


SPORTS = SegmentSet([parse_segment({"id": 1, "name": "sports", "lookback_days": 3,
                                    "rule": {"where": [{"field": "path", "op": "prefix", "value": "/sports"}]}})])


def opt_out_after_the_latest(warehouse: Client, cookie_id: str, after_latest_ms: int = 1000) -> None:
    """Records an opt-out `after_latest_ms` after the latest one in the warehouse, whichever test
    recorded it: a build takes opt-outs as new only when they were recorded after the last build's
    latest, so a time of the test's own could fall before another test's and read as a late one."""
    latest = warehouse.query("SELECT toUnixTimestamp64Milli(max(opted_out_at)) FROM crumb.optouts").result_rows
    warehouse.insert("crumb.optouts", [[cookie_id, int(latest[0][0] or 0) + after_latest_ms]],
                     column_names=["id", "opted_out_at"])


def test_deltas_and_history_follow_the_window(warehouse: Client) -> None:
    a, b = cookie(), cookie()
    insert(warehouse, [{"ts": T0 - 1000, "cookie_id": a, "path": "/sports/x"},
                       {"ts": T0 + 2 * DAY, "cookie_id": b, "path": "/sports/y"}])
    first = build(warehouse, SPORTS, as_of_ms=T0)
    assert members(warehouse) == {(1, a, "cookie")}
    second = build(warehouse, SPORTS, as_of_ms=T0 + 2 * DAY)  # a still within 3 days; b enters
    assert members(warehouse) == {(1, a, "cookie"), (1, b, "cookie")}
    third = build(warehouse, SPORTS, as_of_ms=T0 + 4 * DAY)  # a's visit is now 4 days old: a exits
    assert members(warehouse) == {(1, b, "cookie")}
    deltas = warehouse.query(
        "SELECT build_id, id, change FROM crumb.segment_deltas WHERE build_id IN {b:Array(UInt64)} "
        "AND id IN {ids:Array(String)} ORDER BY build_id",  # other tests' members exit these builds too
        parameters={"b": [first.build_id, second.build_id, third.build_id], "ids": [a, b]}).result_rows
    assert deltas == [(first.build_id, a, "enter"), (second.build_id, b, "enter"), (third.build_id, a, "exit")]

    def was_member(at_ms: int) -> set[str]:
        return {r[0] for r in warehouse.query(
            "SELECT id FROM crumb.segment_history WHERE segment_id = 1 AND id IN {ids:Array(String)} "
            "AND entered_at <= fromUnixTimestamp64Milli({t:Int64}, 'UTC') "
            "AND exited_at > fromUnixTimestamp64Milli({t:Int64}, 'UTC')",
            parameters={"ids": [a, b], "t": at_ms}).result_rows}

    assert was_member(T0 + DAY) == {a}
    assert was_member(T0 + 3 * DAY) == {a, b}
    assert was_member(T0 + 5 * DAY) == {b}


def test_linked_ids_are_one_profile_and_all_get_the_membership(warehouse: Client) -> None:
    c1, c2, fp = cookie(), cookie(), cookie()
    at = T0 + 30 * DAY
    insert(warehouse, [
        {"ts": at - 1000, "cookie_id": c1, "fp_id": fp, "path": "/a"},
        {"ts": at - 2000, "cookie_id": c2, "fp_id": fp, "path": "/b"},
        {"ts": at - 3000, "cookie_id": c2, "path": "/sports/1"},
        {"ts": at - 4000, "cookie_id": c1, "path": "/sports/2"},
    ])
    two_visits = SegmentSet([parse_segment({"id": 2, "name": "two", "rule": {
        "where": [{"field": "path", "op": "prefix", "value": "/sports"}], "min_count": 2}})])
    result = build(warehouse, two_visits, as_of_ms=at)
    # Neither cookie alone read sports twice; the profile did.
    assert members(warehouse) == {(2, c1, "cookie"), (2, c2, "cookie"), (2, fp, "fp")}
    assert (result.profiles, result.members) == (1, 3)
    profiles = {r[0] for r in warehouse.query("SELECT DISTINCT profile_id FROM crumb.segment_members").result_rows}
    assert profiles == {"c:" + min(c1, c2)}


def test_a_profiles_own_id_is_left_out_of_the_profile_join(warehouse: Client,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers take an ID the Join lacks as its own profile, so the build keeps only the others."""
    c1, c2, fp = sorted([cookie(), cookie(), cookie()])
    at = T0 + 30 * DAY
    insert(warehouse, [
        {"ts": at - 1000, "cookie_id": c1, "fp_id": fp, "path": "/sports/a"},
        {"ts": at - 2000, "cookie_id": c2, "fp_id": fp, "path": "/b"},
    ])
    joined: list[set[tuple[str, str]]] = []
    fill = builder._fill_profile_of

    def fill_and_read(client: Client, rows_table: str) -> None:
        fill(client, rows_table)
        joined.append(set(client.query(f"SELECT id, profile FROM {builder.PROFILE_OF}").result_rows))

    monkeypatch.setattr(builder, "_fill_profile_of", fill_and_read)
    build(warehouse, SPORTS, as_of_ms=at)
    ours = [{row for row in rows if row[1] == "c:" + c1} for rows in joined]  # others' events share the window
    assert ours == [{("c:" + c2, "c:" + c1), ("f:" + fp, "c:" + c1)}]
    assert all(id_ != profile for rows in joined for id_, profile in rows)
    assert {(1, c1, "cookie"), (1, c2, "cookie"), (1, fp, "fp")} <= members(warehouse)
    profiles = warehouse.query("SELECT id, profile FROM crumb.segment_profiles WHERE profile = {p:String}",
                               parameters={"p": "c:" + c1}).result_rows
    assert sorted(profiles) == [("c:" + c1, "c:" + c1), ("c:" + c2, "c:" + c1), ("f:" + fp, "c:" + c1)]


def test_bots_unconsented_and_opted_out_are_excluded(warehouse: Client) -> None:
    human, bot, unconsented, gone = cookie(), cookie(), cookie(), cookie()
    at = T0 + 60 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": c, "path": "/sports", **extra} for c, extra in
                       [(human, {}), (bot, {"is_bot": 1}), (unconsented, {"can_profile": 0}), (gone, {})]])
    warehouse.insert("crumb.optouts", [[gone, at]], column_names=["id", "opted_out_at"])
    build(warehouse, SPORTS, as_of_ms=at)
    assert members(warehouse) == {(1, human, "cookie")}


def test_a_failed_build_leaves_the_previous_one_in_place(warehouse: Client) -> None:
    a = cookie()
    at = T0 + 90 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": a, "path": "/sports"}])
    build(warehouse, SPORTS, as_of_ms=at)
    before = members(warehouse)
    warehouse.command("RENAME TABLE crumb.segment_history_closed TO crumb.segment_history_away")
    try:
        with pytest.raises(BuildError, match="previous build stays in place"):
            build(warehouse, SegmentSet([]), as_of_ms=at)  # would empty every segment
    finally:
        warehouse.command("RENAME TABLE crumb.segment_history_away TO crumb.segment_history_closed")
    assert members(warehouse) == before
    status, error = warehouse.query(
        "SELECT status, error FROM crumb.builds FINAL ORDER BY build_id DESC LIMIT 1").result_rows[0]
    assert status == "failed" and "segment_history_closed" in error
    latest = warehouse.query("SELECT max(build_id) FROM crumb.builds").result_rows[0][0]
    assert warehouse.query("SELECT count() FROM crumb.segment_deltas WHERE build_id = {b:UInt64}",
                           parameters={"b": latest}).result_rows == [(0,)]


class Killed(BaseException):
    """Stands in for kill -9: no except clause of the build runs, nor its recording of the end."""


def cut_short(warehouse: Client, as_of_ms: int, after_swap: bool) -> int:
    """A build of SPORTS whose process stops right before (or right after) its exchange; its ID."""
    swap = builder._swap

    def swap_and_die(client: Client, build_id: int) -> None:
        if after_swap:
            swap(client, build_id)
        raise Killed("the process stopped at the exchange")

    builder._swap = swap_and_die
    try:
        with pytest.raises(Killed):
            build(warehouse, SPORTS, as_of_ms=as_of_ms)
    finally:
        builder._swap = swap
    return int(warehouse.query("SELECT max(build_id) FROM crumb.builds").result_rows[0][0])


def test_a_build_cut_short_is_cleaned_up_once_and_marked_failed(warehouse: Client) -> None:
    at = T0 + 120 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": cookie(), "path": "/sports"}])
    crashed = cut_short(warehouse, at, after_swap=False)
    # The row still says running, and its deltas exist (other tests' members of segment 1 exit too).
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": crashed}).result_rows == [("running",)]
    assert warehouse.query("SELECT count() FROM crumb.id_deltas WHERE build_id = {b:UInt64}",
                           parameters={"b": crashed}).result_rows[0][0] > 0
    build(warehouse, SPORTS, as_of_ms=at)
    status, error = warehouse.query("SELECT status, error FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                                    parameters={"b": crashed}).result_rows[0]
    assert status == "failed" and error.startswith("interrupted")
    assert warehouse.query("SELECT count() FROM crumb.id_deltas WHERE build_id = {b:UInt64}",
                           parameters={"b": crashed}).result_rows == [(0,)]


def test_a_build_cut_short_after_its_swap_is_recovered_as_succeeded(warehouse: Client) -> None:
    at = T0 + 1000 * DAY
    leaving, coming = cookie(), cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": leaving, "path": "/sports/x"},
                       {"ts": at + 2 * DAY - 1000, "cookie_id": coming, "path": "/sports/y"}])
    build(warehouse, SPORTS, as_of_ms=at)
    stopped = cut_short(warehouse, at + 4 * DAY, after_swap=True)  # `leaving` exits, `coming` enters
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": stopped}).result_rows == [("running",)]
    assert {i for _s, i, _t in members(warehouse)} & {leaving, coming} == {coming}  # its members are live
    after = build(warehouse, SPORTS, as_of_ms=at + 4 * DAY + 3_600_000)
    # Its moves stay, for activation and history: marked failed and discarded, they were never sent,
    # and `leaving` had no interval at all.
    status, error, entered, exited = warehouse.query(
        "SELECT status, error, entered, exited FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
        parameters={"b": stopped}).result_rows[0]
    assert (status, error, entered, exited) == ("succeeded", "recovered: the process running it stopped after "
                                                "its swap", 1, 1)
    assert warehouse.query(
        "SELECT build_id, id, change FROM crumb.segment_deltas WHERE id IN {ids:Array(String)} ORDER BY build_id, id",
        parameters={"ids": [leaving, coming]}).result_rows == sorted(
        [(stopped - 1, leaving, "enter"), (stopped, leaving, "exit"), (stopped, coming, "enter")])
    assert (after.entered, after.exited) == (0, 0)
    assert warehouse.query("SELECT count() FROM crumb.segment_history WHERE id = {i:String}",
                           parameters={"i": leaving}).result_rows == [(1,)]


def test_a_build_cut_short_is_left_for_later_when_whether_it_went_live_cannot_be_read(
        warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # Taken for one that never swapped, a live build's deltas were deleted.
    at = T0 + 1050 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": cookie(), "path": "/sports/x"}])
    stopped = cut_short(warehouse, at, after_swap=False)
    monkeypatch.setattr(builder, "_swapped_in", lambda _client, _build_id: None)
    build(warehouse, SPORTS, as_of_ms=at)
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": stopped}).result_rows == [("running",)]
    monkeypatch.undo()
    build(warehouse, SPORTS, as_of_ms=at)  # now it can be read: it never went live
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": stopped}).result_rows == [("failed",)]


def test_a_build_that_fails_after_its_swap_succeeded(warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # An error once its members are live (the exchange ran, its answer was lost): marked failed,
    # its deltas deleted, its moves never reached activation, and the next build's were against them.
    at = T0 + 1030 * DAY
    member = cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": member, "path": "/sports/x"}])
    swap = builder._swap

    def swap_then_fail(client: Client, build_id: int) -> None:
        swap(client, build_id)
        raise RuntimeError("the connection dropped")

    monkeypatch.setattr(builder, "_swap", swap_then_fail)
    result = build(warehouse, SPORTS, as_of_ms=at)
    assert (result.status, result.error) == ("succeeded", "after its swap: RuntimeError: the connection dropped")
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": result.build_id}).result_rows == [("succeeded",)]
    assert warehouse.query("SELECT build_id, change FROM crumb.segment_deltas WHERE id = {i:String}",
                           parameters={"i": member}).result_rows == [(result.build_id, "enter")]


def test_a_build_of_no_members_cut_short_after_its_swap_is_recovered(warehouse: Client) -> None:
    # Its members table is empty: which build it holds is in the table's comment, not its rows.
    at = T0 + 1040 * DAY
    leaving = cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": leaving, "path": "/sports/x"}])
    build(warehouse, SPORTS, as_of_ms=at)
    stopped = cut_short(warehouse, at + 10 * DAY, after_swap=True)  # `leaving` exits: nobody is left
    build(warehouse, SPORTS, as_of_ms=at + 10 * DAY + 3_600_000)
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": stopped}).result_rows == [("succeeded",)]
    assert warehouse.query("SELECT change FROM crumb.segment_deltas WHERE id = {i:String} AND build_id = {b:UInt64}",
                           parameters={"i": leaving, "b": stopped}).result_rows == [("exit",)]


def test_a_build_that_succeeded_stays_one_when_its_clean_up_fails(
        warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    at = T0 + 1020 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": cookie(), "path": "/sports/x"}])

    def fail(_client: Client) -> None:
        raise RuntimeError("the connection dropped")

    monkeypatch.setattr(builder, "release_memory", fail)
    result = build(warehouse, SPORTS, as_of_ms=at)  # no exception: the caller loads the store from it
    assert result.status == "succeeded"
    assert warehouse.query("SELECT status FROM crumb.builds FINAL WHERE build_id = {b:UInt64}",
                           parameters={"b": result.build_id}).result_rows == [("succeeded",)]


def test_the_deltas_view_shows_succeeded_builds_only(warehouse: Client) -> None:
    # A build writes its deltas before its swap; a failed one's stay where its clean-up failed.
    at = T0 + 1010 * DAY
    member = cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": member, "path": "/sports/x"}])
    seen: list[list[tuple[Any, ...]]] = []

    def at_swap(line: str) -> None:
        if "swap" in line and not seen:
            seen.append(warehouse.query("SELECT change FROM crumb.segment_deltas WHERE id = {i:String}",
                                        parameters={"i": member}).result_rows)

    build(warehouse, SPORTS, as_of_ms=at, progress=Progress(sink=at_swap))
    assert seen == [[]]  # the build was running
    assert warehouse.query("SELECT change FROM crumb.segment_deltas WHERE id = {i:String}",
                           parameters={"i": member}).result_rows == [("enter",)]
    # The scheduler's next build is an interval after this one started, not at once.
    assert 0 < build_due_in(warehouse, 3600) <= 3600


def test_erasure_removes_the_id_from_members_deltas_and_history(warehouse: Client, live_server: LiveServer) -> None:
    kept, erased, erased_fp = cookie(), cookie(), cookie()
    sharer, shared_fp = cookie(), cookie()  # a cookie that stays, with a first-party ID that goes
    # The day before as_of's: rolled up by the build, so the rollup holds them too. The erased
    # cookie is linked to a first-party ID: the build's profiles hold it.
    insert(warehouse, [{"ts": T0 - DAY, "cookie_id": kept, "path": "/sports/x"},
                       {"ts": T0 - DAY - 1000, "cookie_id": erased, "fp_id": erased_fp, "path": "/sports/y"},
                       {"ts": T0 - DAY - 2000, "cookie_id": sharer, "fp_id": shared_fp, "path": "/sports/z"}])
    build(warehouse, SPORTS, as_of_ms=T0 - 3_600_000)
    build(warehouse, SPORTS, as_of_ms=T0)  # the `_next` tables now hold the first build's rows
    gone = [erased, shared_fp]
    next_rows = ("SELECT (SELECT count() FROM crumb.id_segments_next WHERE id IN {ids:Array(String)}) + "
                 "(SELECT count() FROM crumb.segment_profiles_next WHERE substring(id, 3) IN {ids:Array(String)})")
    assert warehouse.query(next_rows, parameters={"ids": gone}).result_rows[0][0] == 4
    links = "SELECT count() FROM crumb.segment_rollup WHERE has(links, {fp:String})"
    assert warehouse.query(links, parameters={"fp": shared_fp}).result_rows[0][0] == 1
    profiles = f"SELECT count() FROM crumb.segment_profiles WHERE id = 'c:{erased}'"
    assert warehouse.query(profiles).result_rows[0][0] == 1
    assert rolled_ids(warehouse, [kept, erased]) == {f"c:{kept}", f"c:{erased}"}
    assert rolled_ids(warehouse, [kept, erased], "segment_rollup_totals") == {f"c:{kept}", f"c:{erased}"}
    assert {(1, kept, "cookie"), (1, erased, "cookie")} <= members(warehouse)

    # Not while a build runs: it holds the builds' lock, and an erasure waits for it, or gives up.
    redis_client = live_server.crumb.runtime.redis
    running_build = redis_client.lock(BUILD_LOCK_KEY, timeout=60, blocking=False)
    assert running_build.acquire()
    try:
        with pytest.raises(ErasureDeferred):
            erase(warehouse, redis_client, gone, "test", wait_s=0)
        assert warehouse.query(profiles).result_rows[0][0] == 1
    finally:
        running_build.release()
    names = erase(warehouse, redis_client, gone, "test")

    assert "crumb.id_segments(_next), segment_profiles(_next), id_deltas, segment_history_closed" in names
    assert warehouse.query(next_rows, parameters={"ids": gone}).result_rows[0][0] == 0
    # The cookie's rolled-up hour it shared with the first-party ID goes (the next build rolls its
    # day up again: the erased events changed it).
    assert warehouse.query(links, parameters={"fp": shared_fp}).result_rows[0][0] == 0
    assert warehouse.query(profiles).result_rows[0][0] == 0
    for table in ("segment_members", "segment_deltas", "segment_history"):
        held = {r[0] for r in warehouse.query(
            f"SELECT DISTINCT id FROM crumb.{table} WHERE id IN {{ids:Array(String)}}",
            parameters={"ids": [kept, erased]}).result_rows}
        assert held == {kept}, table
    assert rolled_ids(warehouse, [kept, erased]) == {f"c:{kept}"}
    # The totals per ID: the IDs' own, and those that held one in their links (the next build
    # totals them again).
    assert rolled_ids(warehouse, [kept, erased, sharer], "segment_rollup_totals") == {f"c:{kept}"}
    assert warehouse.query("SELECT count() FROM crumb.segment_rollup_totals WHERE has(links, {fp:String})",
                           parameters={"fp": shared_fp}).result_rows[0][0] == 0


def rolled_ids(client: Client, ids: list[str], table: str = "segment_rollup") -> set[str]:
    return {r[0] for r in client.query(
        f"SELECT DISTINCT row_id FROM crumb.{table} WHERE row_id IN {{typed:Array(String)}}",
        parameters={"typed": [f"c:{i}" for i in ids]}).result_rows}


FREQUENT = SegmentSet([parse_segment({"id": 5, "name": "frequent sports", "lookback_days": 5, "rule": {
    "where": [{"field": "path", "op": "prefix", "value": "/sports"}], "min_count": 4}})])


def test_past_days_are_rolled_up_once_and_again_when_their_events_change(warehouse: Client) -> None:
    a = cookie()
    at = T0 + 60 * DAY + 6 * 3_600_000  # 06:00 UTC
    insert(warehouse, [{"ts": at - 3 * DAY, "cookie_id": a, "path": "/sports/1"},
                       {"ts": at - 2 * DAY, "cookie_id": a, "path": "/sports/2"},
                       {"ts": at - 60_000, "cookie_id": a, "path": "/sports/3"}])
    first = build(warehouse, FREQUENT, as_of_ms=at)
    assert first.rolled_days == 2  # the past days with events; as_of's own day is read as events
    assert rolled_ids(warehouse, [a]) == {f"c:{a}"} and (5, a, "cookie") not in members(warehouse)

    an_hour_later = build(warehouse, FREQUENT, as_of_ms=at + 3_600_000)
    assert an_hour_later.rolled_days == 0  # nothing changed: every past day is read as rolled up

    # A late event for a rolled day (a spool replayed): that day alone is rolled up again, and counts.
    insert(warehouse, [{"ts": at - 2 * DAY + 60_000, "cookie_id": a, "path": "/sports/4"}])
    late = build(warehouse, FREQUENT, as_of_ms=at + 2 * 3_600_000)
    assert late.rolled_days == 1 and (5, a, "cookie") in members(warehouse)

    # The next day: what was as_of's own day is a whole past day now, and rolled up.
    next_day = build(warehouse, FREQUENT, as_of_ms=at + DAY)
    assert next_day.rolled_days == 1 and (5, a, "cookie") in members(warehouse)
    assert build(warehouse, FREQUENT, as_of_ms=at + 3 * DAY).rolled_days == 0  # nothing new; old days dropped
    assert (5, a, "cookie") not in members(warehouse)  # /sports/1 left the window


def test_a_plan_with_other_predicates_starts_a_new_rollup(warehouse: Client) -> None:
    a = cookie()
    at = T0 + 70 * DAY
    insert(warehouse, [{"ts": at - DAY - 1000, "cookie_id": a, "path": "/news/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    news = SegmentSet([parse_segment({"id": 6, "name": "news", "lookback_days": 3,
                                      "rule": {"where": [{"field": "path", "op": "prefix", "value": "/news"}]}})])
    result = build(warehouse, news, as_of_ms=at)
    assert result.rolled_days == 1 and (6, a, "cookie") in members(warehouse)
    again = build(warehouse, news, as_of_ms=at)
    assert again.rolled_days == 0 and (6, a, "cookie") in members(warehouse)


def test_the_rollup_stores_its_counts_plain_and_a_table_of_an_older_layout_is_rolled_up_anew(
        warehouse: Client) -> None:
    a = cookie()
    at = T0 + 75 * DAY
    insert(warehouse, [{"ts": at - DAY - 1000, "cookie_id": a, "path": "/sports/1"}])
    assert build(warehouse, SPORTS, as_of_ms=at).rolled_days == 1
    codecs = dict(warehouse.query("SELECT name, compression_codec FROM system.columns "
                                  "WHERE database = 'crumb' AND table = 'segment_rollup'").result_rows)
    assert codecs.pop("row_id") == codecs.pop("links") == ""  # the default: compressed
    assert codecs and set(codecs.values()) == {"CODEC(NONE)"}
    totals = dict(warehouse.query("SELECT name, compression_codec FROM system.columns "
                                  "WHERE database = 'crumb' AND table = 'segment_rollup_totals'").result_rows)
    assert totals.pop("row_id") == totals.pop("links") == ""  # and so are the totals per ID
    assert totals and set(totals.values()) == {"CODEC(NONE)"}
    # A table rolled up by an older release has another fingerprint: the next build starts anew.
    warehouse.command("ALTER TABLE crumb.segment_rollup MODIFY COMMENT 'an older layout'")
    again = build(warehouse, SPORTS, as_of_ms=at)
    assert again.rolled_days == 1 and (1, a, "cookie") in members(warehouse)


class FailingOn:
    """The warehouse's client, but its first command that starts with `prefix` fails, as if the
    process died there."""

    def __init__(self, client: Client, prefix: str) -> None:
        self._client, self._prefix, self.failed = client, prefix, False

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if not self.failed and sql.startswith(self._prefix):
            self.failed = True
            raise RuntimeError(f"stopped before: {sql}")
        return self._client.command(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_totals_cut_short_are_written_again_by_the_next_build(warehouse: Client) -> None:
    a = cookie()
    at = T0 + 540 * DAY + 6 * 3_600_000
    insert(warehouse, [{"ts": at - DAY, "cookie_id": a, "path": "/sports/1"}])  # a rolled-up day
    failing = FailingOn(warehouse, "INSERT INTO crumb.segment_rollup_totals")
    with pytest.raises(BuildError):
        build(failing, SPORTS, as_of_ms=at)  # type: ignore[arg-type]
    assert failing.failed
    # The table was made, but never keyed: the next build does not take it for the day's totals.
    again = build(warehouse, SPORTS, as_of_ms=at)
    assert "totals" in again.timings and (1, a, "cookie") in members(warehouse)


class Recording:
    """The warehouse's client, recording every command it runs."""

    def __init__(self, client: Client) -> None:
        self._client, self.commands = client, []  # type: tuple[Client, list[str]]

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self.commands.append(sql)
        return self._client.command(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_the_totals_are_written_a_part_of_the_ids_at_a_time(
        warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [cookie() for _ in range(12)]
    at = T0 + 560 * DAY + 6 * 3_600_000
    insert(warehouse, [{"ts": at - DAY - hour * 3_600_000, "cookie_id": a, "path": "/sports/1"}
                       for a in ids for hour in range(2)])  # two rolled-up hours each
    monkeypatch.setattr(rollup, "ROWS_PER_TOTALS_PART", 1)  # a part per rolled-up row, up to the cap
    recording = Recording(warehouse)
    build(recording, SPORTS, as_of_ms=at)  # type: ignore[arg-type]
    inserts = [sql for sql in recording.commands if sql.startswith("INSERT INTO crumb.segment_rollup_totals")]
    assert len(inserts) == rollup.MAX_TOTALS_PARTS < len(ids)
    totals = warehouse.query("SELECT row_id, count() FROM crumb.segment_rollup_totals "
                             "WHERE row_id IN {ids:Array(String)} GROUP BY row_id",
                             parameters={"ids": [f"c:{a}" for a in ids]}).result_rows
    assert sorted(totals) == sorted((f"c:{a}", 1) for a in ids)  # every ID once, in one part
    assert {(1, a, "cookie") for a in ids} <= members(warehouse)


def test_a_rollup_replaced_halfway_is_rolled_up_again(warehouse: Client) -> None:
    a = cookie()
    at = T0 + 150 * DAY
    insert(warehouse, [{"ts": at - DAY - 1000, "cookie_id": a, "path": "/sports/1"}])
    assert build(warehouse, SPORTS, as_of_ms=at).rolled_days == 1
    warehouse.command("ALTER TABLE crumb.segment_rollup MODIFY COMMENT 'an older layout'")
    # The build replacing the table stops once the new one is made, before it rolls a day into
    # it: the record of the old table's days must not read as the new one's, or the next build
    # reads an empty rollup as rolled up.
    failing = FailingOn(warehouse, "INSERT INTO crumb.segment_rollup ")
    with pytest.raises(BuildError):
        build(failing, SPORTS, as_of_ms=at)  # type: ignore[arg-type]
    assert failing.failed
    again = build(warehouse, SPORTS, as_of_ms=at)
    assert again.rolled_days == 1 and (1, a, "cookie") in members(warehouse)


def test_days_rolled_into_another_nodes_rollup_are_rolled_up_here(warehouse: Client) -> None:
    # On a cluster each node keeps its own rollup, and the record of rolled days is replicated. A
    # node whose own table has the plan's key but not the days another node recorded (it was made
    # there, by an earlier build) must roll them up, not read its empty table as rolled up.
    a = cookie()
    at = T0 + 160 * DAY
    insert(warehouse, [{"ts": at - DAY - 1000, "cookie_id": a, "path": "/sports/1"}])
    assert build(warehouse, SPORTS, as_of_ms=at).rolled_days == 1
    key = warehouse.query("SELECT comment FROM system.tables WHERE database = 'crumb' "
                          "AND name = 'segment_rollup'").result_rows[0][0]
    # This node's table instead: the same plan's, empty, and none of its totals.
    warehouse.command("CREATE TABLE crumb._other_rollup AS crumb.segment_rollup")
    warehouse.command("EXCHANGE TABLES crumb.segment_rollup AND crumb._other_rollup")
    warehouse.command("DROP TABLE crumb._other_rollup")
    warehouse.command(f"ALTER TABLE crumb.segment_rollup MODIFY COMMENT '{key}'")
    warehouse.command("DROP TABLE crumb.segment_rollup_totals")
    again = build(warehouse, SPORTS, as_of_ms=at, follow=False)
    assert again.rolled_days == 1 and (1, a, "cookie") in members(warehouse)


def test_every_replica_exchanges_the_members_on_a_cluster() -> None:
    assert builder.swap_statements() == [
        "EXCHANGE TABLES crumb.segment_profiles AND crumb.segment_profiles_next",
        "EXCHANGE TABLES crumb.id_segments AND crumb.id_segments_next"]
    on_cluster = builder.swap_statements("ON CLUSTER `crumb`")
    assert [s.endswith(" ON CLUSTER `crumb`") for s in on_cluster] == [True, True]
    assert on_cluster[-1].startswith("EXCHANGE TABLES crumb.id_segments ")  # the members last


def build_tables(client: Client) -> list[str]:
    """The scratch tables of builds left in the warehouse."""
    return [row[0] for row in client.query(
        "SELECT name FROM system.tables WHERE database = 'crumb' AND name LIKE '\\_build%'").result_rows]


def chain(at: int, pairs: int = 6) -> tuple[list[str], list[dict[str, Any]]]:
    """Cookies linked in a chain through first-party IDs (c0-f0-c1-f1-...): its profile settles in
    link rounds, not at once. Returns the cookies and the events."""
    cookies, fps = [cookie() for _ in range(pairs)], [cookie() for _ in range(pairs)]
    rows = [{"ts": at - 10_000 - i, "cookie_id": cookies[i], "fp_id": fps[i], "path": "/a"} for i in range(pairs)]
    rows += [{"ts": at - 20_000 - i, "cookie_id": cookies[i + 1], "fp_id": fps[i], "path": "/b"}
             for i in range(pairs - 1)]
    return cookies, rows


def test_links_that_do_not_settle_fail_the_build_and_leave_no_scratch_table(
        warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    at = T0 + 500 * DAY
    cookies, rows = chain(at)
    insert(warehouse, [*rows, {"ts": at - 1000, "cookie_id": cookies[-1], "path": "/sports/1"}])
    monkeypatch.setattr(builder, "MAX_LINK_ROUNDS", 0)
    with pytest.raises(BuildError, match="did not settle"):
        build(warehouse, SPORTS, as_of_ms=at)
    assert build_tables(warehouse) == []
    monkeypatch.undo()
    settled = build(warehouse, SPORTS, as_of_ms=at)
    assert settled.link_rounds > 0 and settled.profiles == 1


def test_scratch_tables_a_stopped_build_left_are_dropped_by_the_next(warehouse: Client) -> None:
    at = T0 + 510 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": cookie(), "path": "/sports/1"}])
    for table in (*builder.LINK_TABLES, builder.ENTERED_ROWS):
        warehouse.command(f"CREATE TABLE {table} (x UInt8) ENGINE = Memory")
    build(warehouse, SPORTS, as_of_ms=at)
    assert build_tables(warehouse) == []


def test_days_a_cookie_shares_with_a_first_party_id_that_opts_out_later_are_rolled_up_again(
        warehouse: Client) -> None:
    at = T0 + 600 * DAY  # days of its own: with no record, every opt-out of the warehouse is looked for
    shared, other, fp = cookie(), cookie(), f"fp-{cookie()}"
    insert(warehouse, [{"ts": at - 2 * DAY, "cookie_id": shared, "fp_id": fp, "path": "/sports/1"},
                       {"ts": at - DAY, "cookie_id": other, "path": "/sports/2"}])
    build(warehouse, SPORTS, as_of_ms=at)
    assert {(1, shared, "cookie"), (1, fp, "fp"), (1, other, "cookie")} <= members(warehouse)
    assert build(warehouse, SPORTS, as_of_ms=at + 3_600_000).rolled_days == 0  # no opt-out since
    opt_out_after_the_latest(warehouse, fp)
    # Its own rows are left out where the totals are read; the cookie's day holds its event.
    assert build(warehouse, SPORTS, as_of_ms=at + 2 * 3_600_000).rolled_days == 1
    assert {row[1] for row in members(warehouse)} & {shared, fp, other} == {other}
    # Days rolled up before their record held opt-outs (before audiences_0016) take every
    # opt-out as new: the cookie's day, rolled again above, leaves out the first-party ID anyway.
    warehouse.command(f"ALTER TABLE {rollup.ROLLED_DAYS} UPDATE optouts = 0, optout_digest = 0, "
                      "optouts_through_ms = 0 WHERE day >= {first:Date}",
                      parameters={"first": rollup.first_day(compile_segments(SPORTS.rule_segments()), at)},
                      settings={"mutations_sync": 2})
    assert build(warehouse, SPORTS, as_of_ms=at + 3 * 3_600_000).rolled_days == 1
    assert build(warehouse, SPORTS, as_of_ms=at + 4 * 3_600_000).rolled_days == 0


def test_a_build_as_of_an_earlier_day_leaves_the_record_of_opt_outs_to_the_later_days(warehouse: Client) -> None:
    # It does not look at the rolled-up days after its window: had it recorded the new opt-out,
    # the next build as of the later day would have taken the cookie's day as checked.
    at = T0 + 700 * DAY
    shared, fp = cookie(), f"fp-{cookie()}"
    insert(warehouse, [{"ts": at - DAY, "cookie_id": shared, "fp_id": fp, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    assert (1, shared, "cookie") in members(warehouse)
    opt_out_after_the_latest(warehouse, fp)
    build(warehouse, SPORTS, as_of_ms=at - 2 * DAY)  # its window ends before the shared day
    assert build(warehouse, SPORTS, as_of_ms=at + 3_600_000).rolled_days == 1
    assert (1, shared, "cookie") not in members(warehouse)


def test_the_scratch_tables_a_build_drops_are_gone_at_once(warehouse: Client) -> None:
    # An Atomic database keeps a dropped table for minutes, and a Join table its memory with it.
    at = T0 + 515 * DAY
    first, second = cookie(), cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": first, "fp_id": f"fp-{first}", "path": "/sports/1"},
                       {"ts": at - 900, "cookie_id": second, "fp_id": f"fp-{first}", "path": "/news"}])
    result = build(warehouse, SPORTS, as_of_ms=at)
    assert result.profiles >= 1 and result.link_rounds > 0  # it made and dropped its link tables
    assert warehouse.query("SELECT count() FROM system.dropped_tables WHERE database = 'crumb' "
                           "AND startsWith(table, '_build_')").result_rows == [(0,)]


def test_a_following_build_through_link_rounds_agrees_with_a_full_one(warehouse: Client) -> None:
    at = T0 + 520 * DAY
    cookies, rows = chain(at)
    insert(warehouse, [*rows, {"ts": at - 1000, "cookie_id": cookies[-1], "path": "/sports/1"}])
    first = build(warehouse, SPORTS, as_of_ms=at)
    insert(warehouse, [{"ts": at + 1000, "cookie_id": cookies[0], "path": "/x"}])  # the chain's head
    later = build(warehouse, SPORTS, as_of_ms=at + 3_600_000)
    assert later.followed == first.build_id and later.link_rounds > 0
    followed = build_state(warehouse)
    full = build(warehouse, SPORTS, as_of_ms=at + 3_600_000, follow=False)
    assert full.followed == 0 and full.entered == full.exited == 0
    assert build_state(warehouse) == followed
    assert {(1, c, "cookie") for c in cookies} <= followed[0]  # the whole chain is one profile, a member


def test_a_build_the_same_day_recomputes_only_the_profiles_it_finds_touched(warehouse: Client) -> None:
    a, b, c = cookie(), cookie(), cookie()
    hour = 3_600_000
    at = T0 + 80 * DAY + 6 * hour
    insert(warehouse, [{"ts": at - DAY, "cookie_id": a, "path": "/sports/1"},
                       {"ts": at - 2 * DAY, "cookie_id": b, "path": "/sports/2"},
                       {"ts": at - DAY, "cookie_id": c, "path": "/news/1"}])
    first = build(warehouse, SPORTS, as_of_ms=at)
    assert first.followed == 0  # the last build was another day's
    assert {(1, a, "cookie"), (1, b, "cookie")} <= members(warehouse) and (1, c, "cookie") not in members(warehouse)

    insert(warehouse, [{"ts": at + hour // 2, "cookie_id": c, "path": "/sports/3"}])
    second = build(warehouse, SPORTS, as_of_ms=at + hour)
    # Only c has a row that changed (windows do not move within a day): c alone is
    # recomputed; a's and b's rows are the first build's, carried into this build.
    assert second.followed == first.build_id and second.recomputed == 1
    assert (second.profiles, second.members) == (3, 3)  # counted over carried-over rows and c's alike
    assert {(1, a, "cookie"), (1, b, "cookie"), (1, c, "cookie")} <= members(warehouse)
    assert warehouse.query("SELECT id, change FROM crumb.segment_deltas WHERE build_id = {b:UInt64}",
                           parameters={"b": second.build_id}).result_rows == [(c, "enter")]
    assert {row[0] for row in warehouse.query(
        "SELECT DISTINCT build_id FROM crumb.segment_members WHERE id IN {ids:Array(String)}",
        parameters={"ids": [a, b, c]}).result_rows} == {second.build_id}

    news = SegmentSet([parse_segment({"id": 6, "name": "news", "lookback_days": 3,
                                      "rule": {"where": [{"field": "path", "op": "prefix", "value": "/news"}]}})])
    assert build(warehouse, SPORTS, as_of_ms=at + 2 * hour, follow=False).followed == 0
    assert build(warehouse, news, as_of_ms=at + 2 * hour).followed == 0  # another plan
    assert build(warehouse, SPORTS, as_of_ms=at + 2 * hour).followed == 0  # the last build's plan was news
    assert build(warehouse, SPORTS, as_of_ms=at + 3 * hour).followed != 0
    # Events the last build counted are gone (the events TTL, a DELETE): the IDs they named
    # cannot be found from the events any more, so the build recomputes everything.
    warehouse.command("DELETE FROM crumb.events WHERE cookie_id = {b:String}", parameters={"b": b})
    removed = build(warehouse, SPORTS, as_of_ms=at + 4 * hour)
    assert removed.followed == 0 and removed.changes["events_removed"] and (1, b, "cookie") not in members(warehouse)
    next_day = build(warehouse, SPORTS, as_of_ms=at + DAY)
    assert next_day.followed == 0 and (1, c, "cookie") in members(warehouse)


def history(client: Client, segment_id: int, ids: list[str]) -> list[tuple[str, int, int]]:
    """(ID, entered, exited) of every interval of these IDs in the segment, as epoch ms."""
    return [(r[0], int(r[1].timestamp() * 1000), int(r[2].timestamp() * 1000)) for r in client.query(
        "SELECT id, entered_at, exited_at FROM crumb.segment_history "
        "WHERE segment_id = {s:UInt32} AND id IN {ids:Array(String)} ORDER BY id, entered_at",
        parameters={"s": segment_id, "ids": ids}).result_rows]


def entry_times(client: Client, ids: list[str]) -> dict[str, list[int]]:
    return {r[0]: [int(t.timestamp() * 1000) for t in r[1]] for r in client.query(
        "SELECT id, entered FROM crumb.id_segments WHERE id IN {ids:Array(String)}",
        parameters={"ids": ids}).result_rows}


def test_members_keep_when_they_entered_and_an_exit_closes_that_interval(warehouse: Client) -> None:
    a, b = cookie(), cookie()
    hour = 3_600_000
    at = T0 // DAY * DAY + 200 * DAY + 6 * hour  # 06:00; a's visit is the evening before
    insert(warehouse, [{"ts": at - 7 * hour, "cookie_id": a, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    assert entry_times(warehouse, [a]) == {a: [at]}
    # b enters an hour later in a build that follows; a's row is carried over with its entry time.
    insert(warehouse, [{"ts": at + hour // 2, "cookie_id": b, "path": "/sports/2"}])
    assert build(warehouse, SPORTS, as_of_ms=at + hour).followed
    assert entry_times(warehouse, [a, b]) == {a: [at], b: [at + hour]}
    # The next day's build recomputes everything; both stay, and keep when they entered.
    assert not build(warehouse, SPORTS, as_of_ms=at + DAY).followed
    assert entry_times(warehouse, [a, b]) == {a: [at], b: [at + hour]}
    # a leaves (its visit's day is before the 3 days before the build's), comes back and leaves
    # again: two intervals. b's visit leaves the window a day after a's.
    build(warehouse, SPORTS, as_of_ms=at + 3 * DAY)
    insert(warehouse, [{"ts": at + 4 * DAY - 1000, "cookie_id": a, "path": "/sports/3"}])
    build(warehouse, SPORTS, as_of_ms=at + 4 * DAY)
    assert entry_times(warehouse, [a, b]) == {a: [at + 4 * DAY]}
    build(warehouse, SPORTS, as_of_ms=at + 8 * DAY)
    assert history(warehouse, 1, [a, b]) == sorted([
        (a, at, at + 3 * DAY), (a, at + 4 * DAY, at + 8 * DAY), (b, at + hour, at + 4 * DAY)])


# The history table before migration audiences_0011: every interval a row, an exit writing it again.
OLD_HISTORY = """
CREATE TABLE crumb.segment_history (
    segment_id UInt32, id String, id_type LowCardinality(String), entered_at DateTime64(3, 'UTC'),
    exited_at DateTime64(3, 'UTC'), version UInt64
) ENGINE = ReplacingMergeTree ORDER BY (segment_id, id, entered_at)
"""


def test_the_history_table_becomes_closed_intervals_and_rows_get_the_open_ones_entry_times(
        warehouse: Client) -> None:
    a, b, c = cookie(), cookie(), cookie()
    at = T0 + 230 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": a, "path": "/sports/1"},
                       {"ts": at + DAY - 1000, "cookie_id": b, "path": "/sports/2"},
                       {"ts": at + DAY - 1000, "cookie_id": c, "path": "/sports/3"}])
    first = build(warehouse, SPORTS, as_of_ms=at)
    last = build(warehouse, SPORTS, as_of_ms=at + DAY)
    # As a build before migration audiences_0009 left them: rows without entry times, and the
    # history a table: a's open interval; b's, and one closed before (written open, then closed);
    # c has none.
    warehouse.command("ALTER TABLE crumb.id_segments UPDATE entered = [] WHERE id IN {ids:Array(String)}",
                      parameters={"ids": [a, b, c]}, settings={"mutations_sync": 2})
    warehouse.command("DROP VIEW crumb.segment_history")
    warehouse.command(OLD_HISTORY)
    open_at = datetime.fromisoformat(OPEN_INTERVAL).replace(tzinfo=UTC)
    never = int(open_at.timestamp() * 1000)

    def ms(t: int) -> datetime:
        return datetime.fromtimestamp(t / 1000, UTC)

    warehouse.insert("crumb.segment_history", [
        [1, a, "cookie", ms(at), open_at, first.build_id],
        [1, b, "cookie", ms(at - 9 * DAY), open_at, first.build_id - 2],
        [1, b, "cookie", ms(at - 9 * DAY), ms(at - 5 * DAY), first.build_id - 1],  # its build succeeded
        [1, b, "cookie", ms(at + DAY), open_at, last.build_id],
    ], column_names=["segment_id", "id", "id_type", "entered_at", "exited_at", "version"])
    warehouse.insert("crumb.builds", [[first.build_id - 1, "succeeded", 1]],
                     column_names=["build_id", "status", "version"])
    rows = warehouse.query("SELECT count() FROM crumb.id_segments").result_rows
    statements = {m.id: [Dialect().render(s) for s in m.statements] for m in MIGRATIONS
                  if m.id in ("audiences_0011_history_closed", "audiences_0012_history_view")}
    closed, view = statements["audiences_0011_history_closed"], statements["audiences_0012_history_view"]
    # Each cut short after any statement runs again from its start: here, after its last but one
    # (the rows with their times are in, those without still there), and after the view is made.
    for statement in [*closed[:-1], *closed, *view, *view]:
        warehouse.command(statement)
    assert warehouse.query("SELECT count() FROM crumb.id_segments").result_rows == rows
    assert entry_times(warehouse, [a, b, c]) == {a: [at], b: [at + DAY], c: [last.as_of_ms]}
    assert history(warehouse, 1, [a, b, c]) == sorted([
        (a, at, never), (b, at - 9 * DAY, at - 5 * DAY), (b, at + DAY, never), (c, last.as_of_ms, never)])
    build(warehouse, SPORTS, as_of_ms=at + 5 * DAY)  # all leave: their intervals close
    assert history(warehouse, 1, [a, b, c]) == sorted([
        (a, at, at + 5 * DAY), (b, at - 9 * DAY, at - 5 * DAY), (b, at + DAY, at + 5 * DAY),
        (c, last.as_of_ms, at + 5 * DAY)])


# The deltas table before migration audiences_0013: a row per segment and ID.
OLD_DELTAS = """
CREATE TABLE crumb.segment_deltas (
    build_id UInt64, built_at DateTime64(3, 'UTC'), segment_id UInt32, id String,
    id_type LowCardinality(String), change Enum8('enter' = 1, 'exit' = 2)
) ENGINE = MergeTree PARTITION BY toYYYYMM(built_at) ORDER BY (build_id, segment_id, id)
"""


def test_the_deltas_table_becomes_a_row_per_id_and_reads_as_it_did(warehouse: Client) -> None:
    a, b = cookie(), cookie()
    at = T0 + 250 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": a, "path": "/sports/1"},
                       {"ts": at + 2 * DAY - 1000, "cookie_id": b, "path": "/sports/2"}])
    first = build(warehouse, SPORTS, as_of_ms=at)
    # As the table held them: every other test's deltas (so that theirs stay), and ours: a row per
    # segment and ID, an ID in two segments at once.
    rows = "SELECT build_id, built_at, segment_id, id, id_type, toString(change) FROM crumb.segment_deltas"
    before = set(warehouse.query(rows).result_rows)
    warehouse.command("RENAME TABLE crumb.segment_deltas TO crumb._test_deltas_view")
    warehouse.command(OLD_DELTAS)
    warehouse.command("INSERT INTO crumb.segment_deltas SELECT * FROM crumb._test_deltas_view")
    warehouse.command("DROP VIEW crumb._test_deltas_view")
    ms = datetime.fromtimestamp(at / 1000, UTC)
    ours = {(7, ms, 11, a, "cookie", "enter"), (7, ms, 12, a, "cookie", "exit"), (7, ms, 11, b, "fp", "exit")}
    warehouse.insert("crumb.segment_deltas", [list(r) for r in ours],
                     column_names=["build_id", "built_at", "segment_id", "id", "id_type", "change"])
    # The view shows succeeded builds' rows (audiences_0018): build 7 is one.
    warehouse.command("INSERT INTO crumb.builds (build_id, started_at, finished_at, as_of, status, version) "
                      "VALUES (7, now64(3), now64(3), fromUnixTimestamp64Milli({at:Int64}, 'UTC'), 'succeeded', 1)",
                      parameters={"at": at})
    statements = {m.id: [Dialect().render(s) for s in m.statements] for m in MIGRATIONS
                  if m.id in ("audiences_0013_id_deltas", "audiences_0014_deltas_view")}
    table, view = statements["audiences_0013_id_deltas"], statements["audiences_0014_deltas_view"]
    for statement in [*table, *table, *view[:1], *view]:  # each cut short runs again from its start
        warehouse.command(statement)
    assert set(warehouse.query(rows).result_rows) == before | {(r[0], ms.replace(tzinfo=None), *r[2:])
                                                               for r in ours}
    assert sorted(warehouse.query(
        "SELECT id, id_type, entered, exited FROM crumb.id_deltas WHERE build_id = 7 AND id IN {ids:Array(String)}",
        parameters={"ids": [a, b]}).result_rows) == sorted([
        (a, "cookie", [11], [12]), (b, "fp", [], [11])])
    # A build after it writes a row per ID.
    later = build(warehouse, SPORTS, as_of_ms=at + 4 * DAY)  # a exits, b enters
    assert sorted(warehouse.query(
        "SELECT id, entered, exited FROM crumb.id_deltas WHERE build_id IN {b:Array(UInt64)} "
        "AND id IN {ids:Array(String)}", parameters={"b": [first.build_id, later.build_id], "ids": [a, b]}
    ).result_rows) == sorted([(a, [1], []), (a, [], [1]), (b, [1], [])])


def test_a_build_writes_history_for_its_exits_only_and_shows_them_once_it_succeeded(
        warehouse: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = cookie(), cookie()
    at = T0 + 240 * DAY
    insert(warehouse, [{"ts": at - 1000, "cookie_id": a, "path": "/sports/1"},
                       {"ts": at + 2 * DAY - 1000, "cookie_id": b, "path": "/sports/2"}])
    first = build(warehouse, SPORTS, as_of_ms=at)
    never = int(datetime.fromisoformat(OPEN_INTERVAL).replace(tzinfo=UTC).timestamp() * 1000)
    seen_before_swap: list[list[tuple[str, int, int]]] = []
    swap = builder._swap

    def looking_first(client: Client, build_id: int) -> None:
        seen_before_swap.append(history(client, 1, [a, b]))
        swap(client, build_id)

    monkeypatch.setattr(builder, "_swap", looking_first)
    later = build(warehouse, SPORTS, as_of_ms=at + 4 * DAY)  # a exits, b enters
    closed = warehouse.query("SELECT build_id, id FROM crumb.segment_history_closed WHERE id IN {ids:Array(String)}",
                             parameters={"ids": [a, b]}).result_rows
    assert closed == [(later.build_id, a)] and first.build_id != later.build_id  # b's entry wrote none
    # Until the swap, a's interval is open in the members, and shows once: the closed one shows
    # once its build has succeeded.
    assert seen_before_swap == [[(a, at, never)]]
    assert history(warehouse, 1, [a, b]) == sorted([(a, at, at + 4 * DAY), (b, at + 4 * DAY, never)])
    # A failed build's closed intervals never show, if its cleanup failed too.
    entered_at, exited_at = (datetime.fromtimestamp(t / 1000, UTC) for t in (at + 4 * DAY, at + 5 * DAY))
    warehouse.insert("crumb.segment_history_closed", [[1, b, "cookie", entered_at, exited_at, 7]],
                     column_names=["segment_id", "id", "id_type", "entered_at", "exited_at", "build_id"])
    warehouse.insert("crumb.builds", [[7, "failed", 1]], column_names=["build_id", "status", "version"])
    assert history(warehouse, 1, [a, b]) == sorted([(a, at, at + 4 * DAY), (b, at + 4 * DAY, never)])


def test_a_following_build_touches_only_the_opt_outs_recorded_since_the_last_build(warehouse: Client) -> None:
    old, new, mate, new_fp, late = cookie(), cookie(), cookie(), cookie(), cookie()
    hour = 3_600_000
    at = T0 // hour * hour + 260 * DAY + 6 * hour
    insert(warehouse, [{"ts": at - DAY, "cookie_id": old, "path": "/sports/1"},
                       {"ts": at - DAY, "cookie_id": new, "fp_id": new_fp, "path": "/sports/2"},
                       {"ts": at - DAY - 1000, "cookie_id": mate, "fp_id": new_fp, "path": "/sports/3"},
                       {"ts": at - DAY, "cookie_id": late, "path": "/sports/4"}])

    opt_out_after_the_latest(warehouse, old)
    build(warehouse, SPORTS, as_of_ms=at)
    assert {m for m in members(warehouse) if m[1] in (old, new, mate, new_fp, late)} == {
        (1, new, "cookie"), (1, mate, "cookie"), (1, new_fp, "fp"), (1, late, "cookie")}

    opt_out_after_the_latest(warehouse, new)
    second = build(warehouse, SPORTS, as_of_ms=at + hour)
    # Only `new` is touched, not every opt-out ever recorded: its two typed forms, the fp its
    # rows link to, and that fp's other cookie (same profile in the last build).
    assert second.followed and second.changes["optouts"] == "new" and second.recomputed == 4
    assert {m for m in members(warehouse) if m[1] in (old, new, mate, new_fp, late)} == {
        (1, mate, "cookie"), (1, new_fp, "fp"), (1, late, "cookie")}

    # Recorded late with an earlier time: the new ones no longer account for the change, so every
    # opted-out ID is touched, and nothing is missed.
    opt_out_after_the_latest(warehouse, late, -DAY)
    third = build(warehouse, SPORTS, as_of_ms=at + 2 * hour)
    assert third.followed and third.changes["optouts"] == "all" and third.recomputed > 4
    assert {m for m in members(warehouse) if m[1] in (old, new, mate, new_fp, late)} == {
        (1, mate, "cookie"), (1, new_fp, "fp")}


def test_an_opt_out_recorded_while_a_build_runs_is_the_next_builds_to_take_in(warehouse: Client) -> None:
    c, fp = cookie(), cookie()
    hour = 3_600_000
    at = T0 // hour * hour + 270 * DAY + 6 * hour
    # Today's events, read as events by each build: one that carries `fp` too, so it counts nowhere
    # once `fp` opts out; then one that touches `c` before the build during which `fp` opts out.
    insert(warehouse, [{"ts": at - hour, "cookie_id": c, "fp_id": fp, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    insert(warehouse, [{"ts": at + hour // 2, "cookie_id": c, "path": "/news/1"}])
    ours = {c, fp}

    def opt_out_once_profiles_start(line: str) -> None:  # after the rows were read, before the links
        if line.endswith(": profiles ...") and not warehouse.query(
                "SELECT count() FROM crumb.optouts WHERE id = {fp:String}", parameters={"fp": fp}).result_rows[0][0]:
            opt_out_after_the_latest(warehouse, fp)

    during = build(warehouse, SPORTS, as_of_ms=at + hour, progress=Progress(sink=opt_out_once_profiles_start))
    assert during.followed and during.recomputed == 2  # c, touched, and fp, of its profile
    # That build read the opt-outs at its start, in every statement: its rows and links agree.
    assert {m for m in members(warehouse) if m[1] in ours} == {(1, c, "cookie"), (1, fp, "fp")}
    after = build(warehouse, SPORTS, as_of_ms=at + 2 * hour)
    # The next one takes the opt-out as new, and recomputes `c` from its profile with `fp`: the
    # visit that carried `fp` counts no more.
    assert after.followed and after.changes["optouts"] == "new"
    assert not {m for m in members(warehouse) if m[1] in ours}
    full = build(warehouse, SPORTS, as_of_ms=at + 2 * hour, follow=False)
    assert (full.entered, full.exited) == (0, 0)  # a full build agrees


def test_a_following_build_recomputes_only_new_events_ids_and_events_age_out_at_midnight(warehouse: Client) -> None:
    sports, reader, late = cookie(), cookie(), cookie()
    hour = 3_600_000
    at = T0 // DAY * DAY + 300 * DAY + 6 * hour  # 06:00
    # Both at the far end of a 2-day window (the day before the day before) and of the segments' lookback.
    insert(warehouse, [{"ts": at - 2 * DAY - 5 * hour, "cookie_id": sports, "path": "/sports/1"},
                       {"ts": at - 2 * DAY - 5 * hour, "cookie_id": reader, "path": "/news/1"},
                       {"ts": at - 5 * DAY, "cookie_id": sports, "path": "/sports/3"}])
    on_sports = [{"field": "path", "op": "prefix", "value": "/sports"}]
    segments = SegmentSet([parse_segment(s) for s in (
        {"id": 4, "name": "recent sports", "lookback_days": 10, "rule": {"where": on_sports, "within_days": 2}},
        {"id": 5, "name": "any visit", "lookback_days": 10, "rule": {"where": []}},
        {"id": 6, "name": "sports twice", "lookback_days": 10, "rule": {"where": on_sports, "min_count": 2}})])
    ours = {sports, reader, late}
    first = build(warehouse, segments, as_of_ms=at)
    assert "totals" in first.timings  # the day's first build totals every ID's rolled-up days
    assert {m for m in members(warehouse) if m[1] in ours} == {
        (4, sports, "cookie"), (5, sports, "cookie"), (5, reader, "cookie"), (6, sports, "cookie")}
    # Hours later the same day, windows have not moved: only the ID with a new event is recomputed.
    insert(warehouse, [{"ts": at + hour, "cookie_id": late, "path": "/sports/9"}])
    later = build(warehouse, segments, as_of_ms=at + 17 * hour)
    assert later.followed and later.recomputed == 1 and "totals" not in later.timings  # it reads them
    # The one ID it recomputed had no row at the last build: each of its memberships enters.
    assert set(warehouse.query(
        "SELECT segment_id, id, change FROM crumb.segment_deltas WHERE build_id = {b:UInt64}",
        parameters={"b": later.build_id}).result_rows) == {(4, late, "enter"), (5, late, "enter")}
    assert set(warehouse.query(
        "SELECT segment_id, id, toUnixTimestamp64Milli(entered_at), exited_at > now() FROM crumb.segment_history "
        "WHERE id = {id:String}", parameters={"id": late}).result_rows) == {
        (4, late, at + 17 * hour, True), (5, late, at + 17 * hour, True)}
    # Its sizes and counts are as if every row were counted again.
    assert warehouse.query(
        "SELECT segment_id, profiles, ids FROM crumb.segment_sizes WHERE build_id = {b:UInt64} ORDER BY segment_id",
        parameters={"b": later.build_id}).result_rows == warehouse.query(
        "SELECT segment_id, uniqExact(profile_id), count() FROM crumb.segment_members GROUP BY segment_id "
        "ORDER BY segment_id").result_rows
    assert (later.members, later.profiles) == warehouse.query(
        "SELECT count(), uniqExact(profile_id) FROM crumb.segment_members").result_rows[0]
    assert {m for m in members(warehouse) if m[1] in ours} == {
        (4, sports, "cookie"), (5, sports, "cookie"), (5, reader, "cookie"), (6, sports, "cookie"),
        (4, late, "cookie"), (5, late, "cookie")}
    full = build(warehouse, segments, as_of_ms=at + 17 * hour, follow=False)
    assert (full.entered, full.exited) == (0, 0)  # a full build agrees
    # The next day's first build is a full one: the sports visit has left the 2-day window.
    next_day = build(warehouse, segments, as_of_ms=at + DAY)
    assert not next_day.followed and "totals" in next_day.timings
    assert {m for m in members(warehouse) if m[1] in ours} == {
        (5, sports, "cookie"), (5, reader, "cookie"), (6, sports, "cookie"), (4, late, "cookie"), (5, late, "cookie")}


def test_hour_digests_read_whole_hours_from_the_events_projection_and_follow_an_erasure(warehouse: Client) -> None:
    kept, erased = cookie(), cookie()
    hour = 3_600_000
    at = T0 // hour * hour + 320 * DAY + 6 * hour
    insert(warehouse, [{"ts": at - h * hour - 1000, "cookie_id": c, "path": f"/{h}"}
                       for h in range(5) for c in (kept, erased)])
    first = datetime.fromtimestamp((at - DAY) / 1000, UTC).date()

    def from_the_events(previous_ms: int) -> dict[int, tuple[int, ...]]:
        return {int(h): tuple(int(v) for v in rest) for h, *rest in warehouse.query(
            "SELECT toUnixTimestamp(toStartOfHour(ts)) AS hour, count(), groupBitXor(cityHash64(event_id)), "
            "countIf(ts <= fromUnixTimestamp64Milli({p:Int64}, 'UTC')), "
            "groupBitXorIf(cityHash64(event_id), ts <= fromUnixTimestamp64Milli({p:Int64}, 'UTC')) "
            "FROM crumb.events WHERE toDate(ts) >= {first:Date} AND ts <= fromUnixTimestamp64Milli({at:Int64}, 'UTC') "
            "GROUP BY hour", parameters={"p": previous_ms, "first": first, "at": at}).result_rows}

    plan = "\n".join(r[0] for r in warehouse.query(
        f"EXPLAIN {WHOLE_HOURS}", parameters={"first": first, "previous": at}).result_rows)
    assert "ReadFromMergeTree (hour_digests)" in plan
    for previous_ms in (at, at - 2 * hour - 500, at - DAY):
        assert hour_digests(warehouse, first, at, previous_ms) == from_the_events(previous_ms)
    before = hour_digests(warehouse, first, at, at)
    # As an erasure deletes (`crumb.privacy`): a lightweight DELETE, which rebuilds the projection.
    warehouse.command("DELETE FROM crumb.events WHERE cookie_id = {c:String}", parameters={"c": erased})
    after = hour_digests(warehouse, first, at, at)
    assert after == from_the_events(at)
    assert [after[h][0] for h in sorted(after)][-5:] == [before[h][0] - 1 for h in sorted(before)][-5:]


def build_state(client: Client) -> tuple[set[tuple[int, str, str]], set[tuple[str, str]], list[tuple[Any, ...]]]:
    """Members, profiles and the sizes of the last build: what a following and a full build agree on."""
    sizes = client.query("SELECT segment_id, profiles, ids FROM crumb.segment_sizes WHERE build_id = "
                         "(SELECT max(build_id) FROM crumb.builds FINAL WHERE status = 'succeeded') "
                         "ORDER BY segment_id").result_rows
    return members(client), set(client.query("SELECT id, profile FROM crumb.segment_profiles").result_rows), sizes


def test_the_build_after_an_erasure_follows_the_last_and_agrees_with_a_full_one(
        warehouse: Client, live_server: LiveServer) -> None:
    # The opt-out worker erases every opted-out ID: were each erasure to make the next build a
    # full one, the scheduler's hourly builds would be first builds wherever people opt out.
    gone, kept = cookie(), cookie()
    hour = 3_600_000
    at = T0 // hour * hour + 400 * DAY + 6 * hour
    insert(warehouse, [{"ts": at - 2 * DAY, "cookie_id": gone, "path": "/sports/1"},
                       {"ts": at - DAY, "cookie_id": kept, "path": "/sports/2"}])
    build(warehouse, SPORTS, as_of_ms=at)
    erase(warehouse, live_server.crumb.runtime.redis, [gone], "test")
    later = build(warehouse, SPORTS, as_of_ms=at + hour)
    assert later.followed and later.changes["erased"] == 2  # its typed IDs: as a cookie and as a first-party ID
    assert {m for m in members(warehouse) if m[1] in (gone, kept)} == {(1, kept, "cookie")}
    followed = build_state(warehouse)
    assert followed[2] == warehouse.query(
        "SELECT segment_id, uniqExact(profile_id), count() FROM crumb.segment_members GROUP BY segment_id "
        "ORDER BY segment_id").result_rows
    full = build(warehouse, SPORTS, as_of_ms=at + hour, follow=False)
    assert full.entered == full.exited == 0 and build_state(warehouse) == followed
    assert build(warehouse, SPORTS, as_of_ms=at + 2 * hour).changes["erased"] == 0  # recomputed once


def test_the_build_after_an_erasure_recomputes_the_ids_that_shared_its_profile(
        warehouse: Client, live_server: LiveServer) -> None:
    # The cookie is a member through the first-party ID's own event: once that ID is erased, it is
    # not, though none of its own events went. Late events in the hours the erasure emptied make
    # up their counts: the erasure, not the counts, says which IDs to recompute.
    hour = 3_600_000
    at = T0 // hour * hour + 560 * DAY + 12 * hour
    linked, fp, late = cookie(), f"fp-{cookie()}", cookie()
    insert(warehouse, [{"ts": at - DAY, "cookie_id": linked, "fp_id": fp, "path": "/news"},
                       {"ts": at - DAY + 1000, "fp_id": fp, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    assert (1, linked, "cookie") in members(warehouse)
    erase(warehouse, live_server.crumb.runtime.redis, [fp], "test")
    insert(warehouse, [{"ts": at - DAY + 2000, "cookie_id": late, "path": "/news"},
                       {"ts": at - DAY + 3000, "cookie_id": late, "path": "/sports/3"}])
    later = build(warehouse, SPORTS, as_of_ms=at + hour)
    assert later.followed and later.changes["erased"] > 2  # the fp's typed IDs and its profile's cookie
    assert (1, linked, "cookie") not in members(warehouse) and (1, late, "cookie") in members(warehouse)
    followed = build_state(warehouse)
    build(warehouse, SPORTS, as_of_ms=at + hour, follow=False)
    assert build_state(warehouse) == followed


def test_the_plan_key_changes_with_what_members_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    # A release whose members mean something else (windows that start elsewhere) follows no build
    # of an earlier one: its first build recomputes everything.
    plan = compile_segments(SPORTS.rule_segments())
    key = plan_key(plan, [])
    monkeypatch.setattr(incremental, "SEMANTICS", incremental.SEMANTICS + 1)
    assert plan_key(plan, []) != key


def test_an_export_holds_what_crumb_keeps_about_an_id_and_an_erasure_leaves_only_its_record(
        warehouse: Client, live_server: LiveServer) -> None:
    from activation.store import SegmentStore
    from crumb import commands

    at = T0 + 530 * DAY
    member, fp = cookie(), f"fp-{cookie()}"
    insert(warehouse, [{"ts": at - DAY, "cookie_id": member, "fp_id": fp, "path": "/sports/1"},
                       {"ts": at - 1000, "cookie_id": member, "path": "/news"}])
    build(warehouse, SPORTS, as_of_ms=at)
    SegmentStore(live_server.crumb.runtime.redis).put([(member, [1])])

    def export(member_id: str) -> dict[str, Any]:
        return commands.export(live_server.crumb.commands, {"id": member_id}, Progress())["held"]

    held = export(member)
    assert [e["path"] for e in held["crumb.events"]] == ["/sports/1", "/news"]
    assert [(m["segment_id"], m["id_type"]) for m in held["crumb.segment_members"]] == [(1, "cookie")]
    assert [h["segment_id"] for h in held["crumb.segment_history"]] == [1]
    assert [(d["entered"], d["exited"]) for d in held["crumb.id_deltas"]] == [([1], [])]
    assert [p["id"] for p in held["crumb.segment_profiles"]] == [f"c:{member}"]
    assert [m["segment_id"] for m in held["redis segment store"]] == [1]
    assert set(held) >= {"crumb.optouts", "crumb.erasures", "crumb.id_matches", "crumb.delivered"}
    # The first-party ID: its event with the cookie, its membership, its profile (the cookie's).
    held_fp = export(fp)
    assert [e["cookie_id"] for e in held_fp["crumb.events"]] == [member]
    assert [(m["id_type"], m["profile_id"]) for m in held_fp["crumb.segment_members"]] == [("fp", f"c:{member}")]

    erase(warehouse, live_server.crumb.runtime.redis, [member], "test")
    after = export(member)
    assert [e["reason"] for e in after.pop("crumb.erasures")] == ["test"]
    assert not any(after.values()), {name: rows for name, rows in after.items() if rows}


def test_a_store_load_right_after_an_erasure_reached_the_store_does_not_bring_the_id_back(
        warehouse: Client, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from activation.store import SegmentStore
    from crumb import privacy

    at = T0 + 800 * DAY
    member = cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": member, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    redis_client = live_server.crumb.runtime.redis
    store = SegmentStore(redis_client)
    store.full_reload(warehouse)
    assert store.segments_of(member) == [1]
    # The scheduler loads the store after each build, and an erasure may come at any moment: here
    # a full reload starts just after the store forgot the ID. It reads what the erasure left.
    position = [e.name for e in privacy.ERASERS].index("redis segment store")
    reload = privacy.Eraser("a store load", lambda client, _redis, _ids: store.full_reload(client))
    monkeypatch.setattr(privacy, "ERASERS", [*privacy.ERASERS[:position + 1], reload, *privacy.ERASERS[position + 1:]])
    erase(warehouse, redis_client, [member], "test")
    assert store.segments_of(member) == []


def test_an_erasure_leaves_the_next_build_the_rows_that_held_the_ids_to_roll_up_not_whole_days(
        warehouse: Client, live_server: LiveServer) -> None:
    # A cookie's day holds its events shared with an erased first-party ID: that cookie's rows of
    # that day are rolled up again (its other hours too, never twice), and totalled again.
    hour = 3_600_000
    at = T0 // hour * hour + 900 * DAY + 6 * hour
    twice = SegmentSet([*SPORTS.by_id.values(), parse_segment({
        "id": 2, "name": "sports twice", "lookback_days": 3,  # no more: a row rolled up twice counts twice
        "rule": {"where": [{"field": "path", "op": "prefix", "value": "/sports"}], "min_count": 2, "max_count": 2}})])
    linked, fp, gone, kept = cookie(), f"fp-{cookie()}", cookie(), cookie()
    insert(warehouse, [
        {"ts": at - DAY - 3 * hour, "cookie_id": linked, "fp_id": fp, "path": "/sports/1"},
        {"ts": at - DAY, "cookie_id": linked, "path": "/sports/2"},
        {"ts": at - DAY + hour, "cookie_id": linked, "path": "/sports/3"},
        {"ts": at - 2 * DAY, "cookie_id": gone, "path": "/sports/4"},
        {"ts": at - 2 * DAY, "cookie_id": kept, "path": "/sports/5"},
    ])
    build(warehouse, twice, as_of_ms=at)
    assert {(1, linked, "cookie"), (1, fp, "fp"), (1, gone, "cookie")} <= members(warehouse)
    assert (2, linked, "cookie") not in members(warehouse)  # three times, one of them with the first-party ID
    erase(warehouse, live_server.crumb.runtime.redis, [fp, gone], "test")
    later = build(warehouse, twice, as_of_ms=at + hour)
    assert later.followed and later.rolled_days == 0 and later.timings["pending"] > 0
    mine = {m for m in members(warehouse) if m[1] in (linked, fp, gone, kept)}
    assert mine == {(1, linked, "cookie"), (2, linked, "cookie"), (1, kept, "cookie")}
    pending = warehouse.query(f"SELECT count() FROM {rollup.PENDING}").result_rows[0][0]
    assert pending == 0
    followed = build_state(warehouse)
    # The same as rolling every day up anew, and totalling every ID.
    warehouse.command(f"DROP TABLE {rollup.ROLLUP}")
    full = build(warehouse, twice, as_of_ms=at + hour, follow=False)
    assert full.rolled_days > 0 and full.entered == full.exited == 0
    assert build_state(warehouse) == followed


def test_an_erasure_pending_cookie_day_that_the_next_build_rolls_up_whole_keeps_its_rows(
        warehouse: Client, live_server: LiveServer) -> None:
    # A late event makes the next build roll the day up whole: its rows of the pending cookie stay.
    hour = 3_600_000
    at = T0 // DAY * DAY + 1300 * DAY + 6 * hour
    shared, fp, other = cookie(), f"fp-{cookie()}", cookie()
    insert(warehouse, [{"ts": at - DAY - 3 * hour, "cookie_id": shared, "fp_id": fp, "path": "/news/1"},
                       {"ts": at - 2 * DAY - 3 * hour, "cookie_id": shared, "fp_id": fp, "path": "/news/2"},
                       {"ts": at - DAY, "cookie_id": shared, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)
    erase(warehouse, live_server.crumb.runtime.redis, [fp], "test")
    insert(warehouse, [{"ts": at - DAY + 5 * hour, "cookie_id": other, "path": "/news/late"}])
    later = build(warehouse, SPORTS, as_of_ms=at + hour)
    assert later.rolled_days == 1 and (1, shared, "cookie") in members(warehouse)
    followed = build_state(warehouse)
    warehouse.command(f"DROP TABLE {rollup.ROLLUP}")
    build(warehouse, SPORTS, as_of_ms=at + hour, follow=False)
    assert build_state(warehouse) == followed


def test_an_erasure_that_fails_halfway_leaves_the_next_build_a_full_one(
        warehouse: Client, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its last step fails (a store load kept the lock): the builds' records are not changed, so the
    # next build, before the erasure is asked again, reads no rolled-up row of the erased ID.
    from activation.store import SegmentStore, StoreError

    hour = 3_600_000
    at = T0 // DAY * DAY + 1400 * DAY + 6 * hour
    gone = cookie()
    insert(warehouse, [{"ts": at - DAY, "cookie_id": gone, "path": "/sports/1"}])
    build(warehouse, SPORTS, as_of_ms=at)

    def busy(self: SegmentStore, ids: list[str], wait_s: float = 0) -> None:
        raise StoreError("a segment store load kept running; erase again later")

    monkeypatch.setattr(SegmentStore, "erase", busy)
    with pytest.raises(StoreError):
        erase(warehouse, live_server.crumb.runtime.redis, [gone], "test")
    later = build(warehouse, SPORTS, as_of_ms=at + hour)
    assert not later.followed and (1, gone, "cookie") not in members(warehouse)


def test_an_erasure_after_a_build_as_of_an_earlier_day_totals_the_pending_cookie_again(
        warehouse: Client, live_server: LiveServer) -> None:
    # The cookie's pending day is after that build's window: its totals are written again anyway.
    hour = 3_600_000
    n = T0 // DAY * DAY + 1500 * DAY + 6 * hour
    shared, fp = cookie(), f"fp-{cookie()}"
    insert(warehouse, [{"ts": n - 2 * DAY, "cookie_id": shared, "path": "/sports/1"},
                       {"ts": n - DAY, "cookie_id": shared, "fp_id": fp, "path": "/news/1"}])
    build(warehouse, SPORTS, as_of_ms=n)
    build(warehouse, SPORTS, as_of_ms=n - DAY)
    erase(warehouse, live_server.crumb.runtime.redis, [fp], "test")
    build(warehouse, SPORTS, as_of_ms=n - DAY + hour)
    assert (1, shared, "cookie") in members(warehouse)
    followed = build_state(warehouse)
    warehouse.command(f"DROP TABLE {rollup.ROLLUP}")
    build(warehouse, SPORTS, as_of_ms=n - DAY + hour, follow=False)
    assert build_state(warehouse) == followed
    later = build(warehouse, SPORTS, as_of_ms=n + hour)  # the pending day is in this window
    assert (1, shared, "cookie") in members(warehouse) and later.status == "succeeded"


def test_a_long_chain_of_references_builds(warehouse: Client) -> None:
    # Each segment refers twice to the one before: the build's statement names each referred-to
    # segment's boolean once (`Plan.referenced`); pasted in at each reference, 14 links made a
    # statement past ClickHouse's query size, and the build failed.
    at = T0 + 900 * DAY
    near, far = cookie(), cookie()
    insert(warehouse, [{"ts": at - 1000, "cookie_id": near, "host": "chain.example"},
                       {"ts": at - 1000, "cookie_id": far, "host": "link30.example"}])
    chain = [parse_segment({"id": 1, "name": "s1", "rule": {"where": [
        {"field": "host", "op": "eq", "value": "chain.example"}]}})]
    chain += [parse_segment({"id": n, "name": f"s{n}", "rule": {"all": [
        {"segment": n - 1},
        {"any": [{"segment": n - 1}, {"where": [{"field": "host", "op": "eq", "value": f"link{n}.example"}]}]}]}})
        for n in range(2, 34)]  # 32 references deep, as deep as the definitions go
    result = build(warehouse, SegmentSet(chain), as_of_ms=at, follow=False)
    assert result.status == "succeeded"
    assert {(s, i) for s, i, _type in members(warehouse) if i in (near, far)} == {(n, near) for n in range(1, 34)}
