"""Hourly builds that recompute only the profiles whose rows changed.

A build an hour after the last one finds most profiles exactly as they were: their rows in each
window are the same rows, so their segments are the same. A profile's segments can change only
when one of its IDs gained or lost a row in some window, or its links changed. Windows start at
the start of a UTC day (`compiler.window_start`), and a build follows only one of the same day:
between the two, no row left any window. Between the last successful build (as of `as_of_p`) and
this one (as of `as_of`), an ID's rows change when:

  new events     it has events in (as_of_p, as_of]: rows entered every window
  late events    it has events in an hour whose events changed since the last build saw it
                 (count and XOR digest of event IDs per hour, up to as_of_p)
  opt-outs       it opted out since: it is in this build's snapshot of the opt-outs and not in
                 the last build's. New opt-outs are those recorded after the last build's
                 latest, when they account for the whole change (count and digest); else every
                 opted-out ID is taken as new. Its links left: it is their touched end
  erasures       it was erased, or shared a profile with an erased ID: the erasure deleted the
                 events and the profile's rows, so it records them as touched, and takes the
                 events out of the state's hour digests (`note_erasure`)

Those IDs are *touched*, and so are the first-party IDs on their rows: both ends of a link that
appeared or left. A profile whose IDs changed holds a touched ID (walk any path that changed up
to its first link that appeared or left: its end is touched). So the build recomputes the
touched IDs and every ID that shared a profile with one in the last build (`segment_profiles`):
that set is closed under the links as they are now, so its profiles are resolved from its own
links alone, and no profile outside it can differ. All other IDs keep their rows of the last
build as they are.

An hour with fewer events than the last build counted, but for erasures (the events TTL, a
DELETE), means IDs whose rows are gone, which the events no longer name: that build recomputes
everything. So does a build on another UTC day than the last (the first build of a day is a full
one, which bounds what any miss could cost to a day), one with another plan, or one without state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import (
    BUILD,
    DAY_MS,
    EVENTS,
    ROW_ID,
    Plan,
    membership_statement,
    window_start,
)
from audiences.rollup import DayDigests, Optouts, fingerprint

STATE = "crumb.segment_build_state"  # migration audiences_0007
TOUCHED = "crumb._build_touched"  # the touched typed IDs
RECOMPUTE = "crumb._build_recompute"  # every typed ID of a profile holding a touched ID
RECOMPUTED = f"(SELECT id FROM {RECOMPUTE})"  # the right side of an IN
TIME_PARAMS = ("since", "as_of_ms", "build_id", "raw_")  # prefixes of the parameters that move with as_of
# What members mean beyond their statement: raised when that changes, so that the first build of
# a release that changes it recomputes everything. 2: windows start at midnight (`window_start`).
SEMANTICS = 2

# Per hour (epoch seconds): (events, digest) now up to as_of, and (events, digest) up to as_of_p.
HourDigests = dict[int, tuple[int, int, int, int]]


@dataclass
class BuildState:
    """What the last successful build saw."""

    build_id: int
    as_of_ms: int
    plan: str
    optouts: Optouts
    hours: dict[int, tuple[int, int]] = field(default_factory=dict)  # hour → (events, digest) up to as_of
    touched: list[str] = field(default_factory=list)  # typed IDs erasures left to recompute since


def plan_key(plan: Plan, lookalike_ids: list[int]) -> str:
    """What the members mean: the rolled rows' fingerprint, the membership statement with its
    parameters but for those of time (and with the entry times its rows keep), the lookalike
    segments (a removed one's rows must go), and `SEMANTICS`."""
    sql, params = membership_statement(plan, 0, 0, keep_entered=True)
    content = [fingerprint(plan), sql, {k: v for k, v in params.items() if not k.startswith(TIME_PARAMS)},
               sorted(lookalike_ids), SEMANTICS]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_state(client: Client) -> BuildState | None:
    """The last successful build's state, if it is still the last successful build's."""
    rows = client.query(
        f"SELECT build_id, toUnixTimestamp64Milli(as_of), plan, optouts, optouts_digest, "
        "toUnixTimestamp64Milli(optouts_through), "
        f"arrayMap(h -> toUnixTimestamp(h), hours), hour_events, hour_digests, touched FROM {STATE} "
        "WHERE build_id = (SELECT max(build_id) FROM crumb.builds FINAL WHERE status = 'succeeded')").result_rows
    if not rows:
        return None
    build_id, as_of_ms, plan, optouts, optouts_digest, through_ms, hours, events, digests, touched = rows[0]
    return BuildState(int(build_id), int(as_of_ms), plan, Optouts(int(optouts), int(optouts_digest), int(through_ms)),
                      {int(h): (int(n), int(d)) for h, n, d in zip(hours, events, digests, strict=True)},
                      list(touched))


def write_state(client: Client, state: BuildState) -> None:
    """Replace the state with this build's, before its swap: a state whose build did not succeed
    is ignored (`read_state`), so a build that fails after this leaves the next one in full."""
    client.command(f"TRUNCATE TABLE {STATE}")
    hours = sorted(state.hours)
    client.insert(STATE, [[
        state.build_id, state.as_of_ms, state.plan, state.optouts.count, state.optouts.digest,
        state.optouts.through_ms,
        [dt.datetime.fromtimestamp(h, dt.UTC) for h in hours], [state.hours[h][0] for h in hours],
        [state.hours[h][1] for h in hours], state.touched,
    ]], column_names=["build_id", "as_of", "plan", "optouts", "optouts_digest", "optouts_through", "hours",
                      "hour_events", "hour_digests", "touched"])


def note_erasure(client: Client, ids: list[str], typed: list[str]) -> Callable[[], None]:
    """Before an erasure deletes the IDs' events and profile rows, read what the last build counted
    of them; returns what to record once every step of the erasure succeeded: the state's hour
    digests without their events, as if the last build had never counted them, and as touched
    the IDs' `typed` forms and every ID that shared a profile with one. The next build then follows
    the last one (recomputing those), where fewer events in an hour would have made it a full one.
    An erasure that stops before recording leaves the state as it was: the next build finds fewer
    events and recomputes everything, as it did before erasures were noted."""
    state = read_state(client)
    if state is None or not state.hours:
        return lambda: None
    params = {"ids": ids, "typed": typed, "first": min(state.hours), "as_of": state.as_of_ms}
    erased = client.query(
        f"SELECT toUnixTimestamp({_HOUR}) AS hour, count(), groupBitXor(cityHash64(event_id)) FROM {EVENTS} "
        "WHERE (cookie_id IN {ids:Array(String)} OR fp_id IN {ids:Array(String)}) "
        "AND ts >= toDateTime({first:UInt32}, 'UTC') AND ts <= fromUnixTimestamp64Milli({as_of:Int64}, 'UTC') "
        "GROUP BY hour", parameters=params).result_rows
    hours = dict(state.hours)
    for hour, count, digest in erased:
        if int(hour) in hours:
            events, xor = hours[int(hour)]
            hours[int(hour)] = (events - int(count), xor ^ int(digest))
    partners = [row[0] for row in client.query(
        "SELECT id FROM crumb.segment_profiles WHERE profile IN "
        "(SELECT profile FROM crumb.segment_profiles WHERE id IN {typed:Array(String)})",
        parameters=params).result_rows]
    touched = sorted({*state.touched, *typed, *partners})
    noted = BuildState(state.build_id, state.as_of_ms, state.plan, state.optouts, hours, touched)
    return lambda: write_state(client, noted)


def can_follow(previous: BuildState | None, key: str, as_of_ms: int) -> bool:
    """Whether this build may recompute only touched profiles on top of `previous`."""
    return (previous is not None and previous.plan == key and previous.as_of_ms <= as_of_ms
            and previous.as_of_ms // DAY_MS == as_of_ms // DAY_MS)


_HOUR = "toStartOfHour(ts)"
_RECENT = f"{_HOUR} >= toStartOfHour(fromUnixTimestamp64Milli({{previous:Int64}}, 'UTC'))"
# The whole hours from `first` up to the hour of the previous build's as_of, that hour excluded:
# in the projection's own key and aggregates, and no other column, or ClickHouse reads the events.
WHOLE_HOURS = (f"SELECT toUnixTimestamp({_HOUR}), count(), groupBitXor(cityHash64(event_id)) FROM {EVENTS} "
               f"WHERE {_HOUR} >= toDateTime({{first:Date}}, 'UTC') AND NOT {_RECENT} GROUP BY {_HOUR}")


def hour_digests(client: Client, first_day: dt.date, as_of_ms: int, previous_as_of_ms: int) -> HourDigests:
    """Per hour from `first_day` to as_of: the events' count and XOR of event ID hashes, up to
    as_of and up to the previous build's as_of. The hours before the previous as_of's are whole
    on both sides, and are read from the events' `hour_digests` projection (`collector.schema`);
    the rest from the events themselves."""
    params = {"first": first_day, "as_of": as_of_ms, "previous": previous_as_of_ms}
    whole = client.query(WHOLE_HOURS, parameters=params).result_rows
    recent = client.query(
        f"SELECT toUnixTimestamp({_HOUR}) AS hour, count(), groupBitXor(cityHash64(event_id)), "
        "countIf(ts <= fromUnixTimestamp64Milli({previous:Int64}, 'UTC')), "
        "groupBitXorIf(cityHash64(event_id), ts <= fromUnixTimestamp64Milli({previous:Int64}, 'UTC')) "
        f"FROM {EVENTS} WHERE toDate(ts) >= {{first:Date}} AND {_RECENT} "
        "AND ts <= fromUnixTimestamp64Milli({as_of:Int64}, 'UTC') GROUP BY hour", parameters=params).result_rows
    digests = {int(h): (int(n), int(d), int(n), int(d)) for h, n, d in whole}
    digests.update({int(h): (int(n), int(d), int(n_p), int(d_p)) for h, n, d, n_p, d_p in recent})
    return digests


def day_digests(hours: HourDigests, before_ms: int) -> DayDigests:
    """Whole days before `before_ms` (as_of's day): (events, digest), from the hours."""
    days: dict[dt.date, tuple[int, int]] = {}
    for hour, (events, digest, _n, _d) in hours.items():
        if hour * 1000 < before_ms:
            day = _date(hour * 1000)
            count, xor = days.get(day, (0, 0))
            days[day] = (count + events, xor ^ digest)
    return days


@dataclass
class Changes:
    """What changed since the previous build, in hours (epoch seconds)."""

    late_hours: list[int]  # hours (up to as_of_p) whose events changed
    optouts: bool
    # When the opt-outs that changed are exactly those recorded after this time (epoch ms), only
    # they are touched; None: every opted-out ID is.
    optouts_after_ms: int | None = None
    # Events the last build counted are gone, but for erasures' (the events TTL, a DELETE): their
    # IDs cannot be read from the events any more, so the build does not follow.
    events_removed: bool = False
    erased: list[str] = field(default_factory=list)  # typed IDs erasures touched (`note_erasure`)

    def summary(self) -> dict[str, Any]:
        optouts = False if not self.optouts else "new" if self.optouts_after_ms is not None else "all"
        return {"late_hours": len(self.late_hours), "optouts": optouts,
                "events_removed": self.events_removed, "erased": len(self.erased)}


def changes(plan: Plan, previous: BuildState, as_of_ms: int, hours: HourDigests, optouts: Optouts,
            added: Optouts | None = None) -> Changes:
    """`added`: the opt-outs recorded after the last build's latest (`optout_digest` with its
    `through_ms`, read with `optouts`). When the last build's and those make up the opt-outs now,
    count and digest, they are the only new ones: an opt-out recorded late with an earlier time,
    one recorded again, or one removed breaks the sum, and every opted-out ID is touched."""
    since_hour = window_start(as_of_ms, plan.max_window_days) // 1000
    late = [hour for hour in sorted(set(hours) | set(previous.hours))
            if since_hour <= hour <= previous.as_of_ms // 1000
            and hours.get(hour, (0, 0, 0, 0))[2:] != previous.hours.get(hour, (0, 0))]
    fewer = any(hours.get(hour, (0, 0, 0, 0))[2] < previous.hours[hour][0] for hour in late if hour in previous.hours)
    only_added = added is not None and previous.optouts.only_added(added, optouts)
    return Changes(late, not optouts.same(previous.optouts),
                   previous.optouts.through_ms if only_added else None, events_removed=fewer, erased=previous.touched)


def touched_statements(changes: Changes, previous_as_of_ms: int, as_of_ms: int) -> list[tuple[str, dict[str, Any]]]:
    """INSERTs of the touched typed IDs into `TOUCHED`: each row's own, and the first-party IDs
    it links to."""
    event_ids = f"arrayJoin(if(cookie_id != '' AND fp_id != '', [{ROW_ID}, concat('f:', fp_id)], [{ROW_ID}]))"
    has_id = "(cookie_id != '' OR fp_id != '')"
    statements = [(
        f"INSERT INTO {TOUCHED} SELECT {event_ids} FROM {EVENTS} WHERE toDate(ts) >= {{day:Date}} "
        "AND ts > fromUnixTimestamp64Milli({previous:Int64}, 'UTC') "
        f"AND ts <= fromUnixTimestamp64Milli({{as_of:Int64}}, 'UTC') AND {has_id}",
        {"day": _date(previous_as_of_ms), "previous": previous_as_of_ms, "as_of": as_of_ms})]
    if changes.late_hours:  # the events as they are now (an hour rolled up again is too)
        statements.append((
            f"INSERT INTO {TOUCHED} SELECT {event_ids} FROM {EVENTS} WHERE toDate(ts) IN {{days:Array(Date)}} "
            f"AND toUnixTimestamp(toStartOfHour(ts)) IN {{hours:Array(UInt32)}} AND {has_id}",
            {"days": sorted({_date(h * 1000) for h in changes.late_hours}), "hours": changes.late_hours}))
    # A new opt-out's own IDs. The IDs linked to it were in its profile at the last build, which
    # read it as opted in (it was not in that build's snapshot: `compiler.BUILD_OPTOUTS`), so the
    # recompute step takes them in; an ID linked to it since is touched by the event that links them.
    # That profile is gone only if the ID was erased, and an erasure records the IDs that were in
    # it (`note_erasure`). No erasure runs during a build, between its hour digests and its
    # recompute step (`crumb.privacy.erase`).
    if changes.erased:
        statements.append((f"INSERT INTO {TOUCHED} SELECT arrayJoin({{erased:Array(String)}})",
                           {"erased": changes.erased}))
    if changes.optouts:  # the new opted-out IDs (or all)
        opted = f"SELECT id FROM {BUILD.optouts}"
        if changes.optouts_after_ms is not None:
            opted += " WHERE opted_out_at > fromUnixTimestamp64Milli({after:Int64}, 'UTC')"
        statements.append((f"INSERT INTO {TOUCHED} SELECT DISTINCT concat(kind, id) FROM ({opted}) "
                           "ARRAY JOIN ['c:', 'f:'] AS kind", {"after": changes.optouts_after_ms or 0}))
    return statements


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()
