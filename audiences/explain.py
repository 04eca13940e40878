"""Why a cookie is in a segment or not: its profile's events against the rule, condition by condition.

The same plan as a build (the compiler numbers the predicates and conditions, and writes each
predicate's SQL), the same profile (IDs seen together on an eligible event, followed to a fixed
point), the same window and bounds; only the evaluation differs. A build probes lookup tables
built for millions of rows. One profile has few events, so each predicate is tested on the row's
own values and the rule tree is evaluated here, in the open, so every step can be shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from audiences.compiler import (
    ELIGIBLE,
    EVENTS,
    OPTOUTS,
    ConditionSpec,
    Plan,
    compile_segments,
    opted_in,
    row_predicate_sql,
    window_filter,
    window_params,
    window_start,
)
from audiences.definitions import All, Any_, Condition, Not, Op, Predicate, SegmentRef, SegmentSet, Status
from audiences.errors import InvalidRequest, UnknownSegment
from audiences.schema import OPEN_INTERVAL
from collector.categories import ContentTaxonomy

ID_TYPES = {"c": "cookie", "f": "fp"}
SEEN = Condition.model_validate({})  # a segment's "seen at all in the lookback", as the compiler adds it



@dataclass(frozen=True)
class Found:
    """What a profile's events show for one condition."""

    count: int = 0
    days: int = 0
    engaged_ms: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def explain(
    client: Client, segment_id: int, cookie_id: str, segments: SegmentSet,
    taxonomy: ContentTaxonomy | None = None, as_of_ms: int | None = None,
) -> dict:
    """The explanation as a JSON-safe dict; `render_text` prints it. `as_of_ms` defaults to the
    as-of time of the last successful build, so the verdict speaks of the current members."""
    if segment_id not in segments.by_id:
        raise UnknownSegment(f"no segment {segment_id} among the definitions")
    if not cookie_id:  # the profile `c:` would read every event without a cookie as its own
        raise InvalidRequest("explain needs a cookie ID, not an empty one")
    as_of_ms, as_of_source = _as_of(client, as_of_ms)
    if segments.by_id[segment_id].kind != "rule":
        raise UnknownSegment(f"segment {segment_id} is a lookalike, scored by a model: its evaluation explains it")
    plan = compile_segments(_activated(segments, segment_id), taxonomy)
    profile = resolve_profile(client, f"c:{cookie_id}", plan, as_of_ms)
    segment = segments.by_id[segment_id]
    evaluation = _Evaluation(plan, segments, taxonomy, as_of_ms)
    evaluation.found = _condition_counts(client, plan, evaluation.reachable(segment_id), profile, as_of_ms)
    tree = evaluation.segment(segment_id)
    lookback = _activity(client, profile, window_start(as_of_ms, segment.lookback_days), as_of_ms)
    return {
        "segment_id": segment_id, "name": segment.name, "cookie_id": cookie_id,
        "as_of": _iso(as_of_ms), "as_of_ms": as_of_ms, "as_of_source": as_of_source,
        "profile": {"profile_id": profile[0], "ids": [_typed(i) for i in profile],
                    "resolution": "IDs seen together on eligible events in the build's window"},
        "in_by_rule": tree["held"],
        "member": _membership(client, segment_id, cookie_id),
        "activity": lookback,
        "excluded": _exclusions(client, profile, lookback, segment.lookback_days,
                                window_start(as_of_ms, segment.lookback_days), as_of_ms),
        "rule": tree,
    }


def _as_of(client: Client, as_of_ms: int | None) -> tuple[int, str]:
    if as_of_ms is not None:
        return as_of_ms, "given"
    rows = client.query(
        "SELECT toUnixTimestamp64Milli(as_of) FROM crumb.builds FINAL WHERE status = 'succeeded' "
        "ORDER BY build_id DESC LIMIT 1").result_rows
    return (int(rows[0][0]), "last build") if rows else (int(time.time() * 1000), "now")


def _activated(segments: SegmentSet, segment_id: int) -> SegmentSet:
    """The definitions as a build compiles them, with the explained segment active even if it is not."""
    target = segments.by_id[segment_id]
    if target.status is Status.ACTIVE:
        return segments
    active = target.model_copy(update={"status": Status.ACTIVE})
    return SegmentSet([active if s.id == segment_id else s for s in segments.by_id.values()])


MAX_PROFILE_HOPS = 10_000  # a chain longer than this is cut short; no real profile is near it


def resolve_profile(client: Client, typed_id: str, plan: Plan, as_of_ms: int) -> list[str]:
    """The typed IDs ('c:<cookie>', 'f:<fp>') of the profile holding `typed_id`, its label first:
    the component of the ID graph the build would find, followed one hop per query."""
    ids, frontier = {typed_id}, {typed_id}
    for _ in range(MAX_PROFILE_HOPS):
        rows = client.query(
            f"SELECT DISTINCT cookie_id, fp_id FROM {EVENTS} WHERE {window_filter()} "
            "AND cookie_id != '' AND fp_id != '' "
            "AND (has({cookies:Array(String)}, cookie_id) OR has({fps:Array(String)}, fp_id))",
            parameters={**window_params(plan, as_of_ms), **_split(frontier)}).result_rows
        frontier = {f"c:{c}" for c, _ in rows} | {f"f:{f}" for _, f in rows}
        frontier -= ids
        if not frontier:
            break
        ids |= frontier
    return sorted(ids)  # the build labels a profile with its smallest typed ID


def _split(typed_ids: set[str] | list[str]) -> dict[str, list[str]]:
    return {"cookies": [i[2:] for i in typed_ids if i.startswith("c:")],
            "fps": [i[2:] for i in typed_ids if i.startswith("f:")]}


def _typed(typed_id: str) -> dict[str, str]:
    return {"id": typed_id[2:], "id_type": ID_TYPES[typed_id[0]]}


def _condition_counts(
    client: Client, plan: Plan, numbers: list[int], profile: list[str], as_of_ms: int,
) -> dict[int, Found]:
    """One query over the profile's eligible events in the window: per condition, the matching events."""
    params: dict[str, Any] = {**window_params(plan, as_of_ms), **_split(profile)}
    tests = []
    for number in numbers:
        spec = plan.conditions[number - 1]
        params[f"since{number}"] = window_start(as_of_ms, spec.window_days)
        matches = [f"ts_ms >= {{since{number}:Int64}}", *(row_predicate_sql(plan, p, params) for p in spec.predicates)]
        tests.append(f"if({' AND '.join(matches)}, toUInt32({number}), toUInt32(0))")
    rows = client.query(
        "SELECT cond, count(), uniqExact(toDate(ts)), sum(engaged_ms), min(ts_ms), max(ts_ms) FROM ("
        " SELECT ts, engaged_ms, toUnixTimestamp64Milli(ts) AS ts_ms,"
        f" arrayJoin(arrayFilter(c -> c != 0, [{', '.join(tests) or 'toUInt32(0)'}])) AS cond"
        f" FROM {EVENTS} WHERE {window_filter()}"
        " AND (has({cookies:Array(String)}, cookie_id) OR has({fps:Array(String)}, fp_id))"
        ") GROUP BY cond", parameters=params).result_rows
    return {int(row[0]): Found(*(int(v) for v in row[1:])) for row in rows}


class _Evaluation:
    """The rule tree of a segment, mirrored node by node with what decided each."""

    def __init__(self, plan: Plan, segments: SegmentSet, taxonomy: ContentTaxonomy | None, as_of_ms: int) -> None:
        self.plan, self.segments, self.taxonomy, self.as_of_ms = plan, segments, taxonomy, as_of_ms
        self.found: dict[int, Found] = {}
        self._predicates = {p.model_dump_json(): n for n, p in enumerate(plan.predicates, 1)}
        self._conditions = {(c.predicates, c.window_days, c.min_count, c.max_count, c.min_days, c.min_engaged_ms): c
                            for c in plan.conditions}

    def spec(self, condition: Condition, lookback_days: int) -> ConditionSpec:
        """The plan's numbered condition for a rule's condition: the compiler's key, looked up."""
        numbers = tuple(sorted({self._predicates[p.model_dump_json()] for p in condition.where}))
        return self._conditions[(numbers, condition.within_days or lookback_days, condition.min_count,
                                 condition.max_count, condition.min_days, condition.min_engaged_ms)]

    def reachable(self, segment_id: int) -> list[int]:
        numbers: set[int] = set()

        def walk(node: Any, lookback_days: int) -> None:
            if isinstance(node, Condition):
                numbers.add(self.spec(node, lookback_days).number)
            elif isinstance(node, SegmentRef):
                ref = self.segments.by_id[node.segment]
                walk(SEEN, ref.lookback_days)
                walk(ref.rule, ref.lookback_days)
            for child in _children(node):
                walk(child, lookback_days)

        walk(SegmentRef(segment=segment_id), 0)
        return sorted(numbers)

    def segment(self, segment_id: int) -> dict:
        segment = self.segments.by_id[segment_id]
        seen = self.condition(SEEN, segment.lookback_days, label="seen at all")
        rule = self.node(segment.rule, segment.lookback_days)
        return {"kind": "segment", "segment_id": segment_id, "name": segment.name,
                "held": seen["held"] and rule["held"], "children": [seen, rule]}

    def node(self, node: Any, lookback_days: int) -> dict:
        if isinstance(node, Condition):
            return self.condition(node, lookback_days)
        if isinstance(node, SegmentRef):
            return self.segment(node.segment)
        children = [self.node(child, lookback_days) for child in _children(node)]
        held = [child["held"] for child in children]
        held_here = all(held) if isinstance(node, All) else any(held) if isinstance(node, Any_) else not held[0]
        return {"kind": _KINDS[type(node)], "held": held_here, "children": children}

    def condition(self, condition: Condition, lookback_days: int, label: str | None = None) -> dict:
        spec = self.spec(condition, lookback_days)
        found = self.found.get(spec.number, Found())
        failed = _failed_bounds(spec, found)
        return {
            "kind": "condition", "condition": spec.number, "label": label,
            "predicates": [describe_predicate(p, self.taxonomy) for p in condition.where],
            "window_days": spec.window_days, "since": _iso(window_start(self.as_of_ms, spec.window_days)),
            "found": {"count": found.count, "days": found.days, "engaged_ms": found.engaged_ms,
                      "first": _iso(found.first_ms), "last": _iso(found.last_ms)},
            "bounds": {"min_count": spec.min_count, "max_count": spec.max_count, "min_days": spec.min_days,
                       "min_engaged_ms": spec.min_engaged_ms},
            "failed": failed, "held": not failed,
        }


_KINDS: dict[type, str] = {All: "all", Any_: "any", Not: "not"}


def _children(node: Any) -> list[Any]:
    if isinstance(node, All):
        return list(node.all)
    if isinstance(node, Any_):
        return list(node.any)
    if isinstance(node, Not):
        return [node.not_]
    return []


def _failed_bounds(spec: ConditionSpec, found: Found) -> list[str]:
    """The bounds the found values miss, as the membership statement tests them."""
    checks = [
        (found.count >= spec.min_count, f"count {found.count} < {spec.min_count}"),
        (spec.max_count is None or found.count <= spec.max_count, f"count {found.count} > {spec.max_count}"),
        (found.days >= (spec.min_days or 0), f"days {found.days} < {spec.min_days}"),
        (found.engaged_ms >= (spec.min_engaged_ms or 0), f"engaged {found.engaged_ms} ms < {spec.min_engaged_ms}"),
    ]
    return [message for ok, message in checks if not ok]


def describe_predicate(predicate: Predicate, taxonomy: ContentTaxonomy | None = None) -> str:
    """`category is 483 (Sports > Soccer)`, `host eq "shop.example.com"`, `type in ["a", "b"]`."""
    if predicate.op is Op.IS:
        value = str(predicate.value)
        named = f" ({taxonomy.label(value)})" if taxonomy is not None and value in taxonomy else ""
        return f"{predicate.field} is {value}{named}"
    if isinstance(predicate.value, list):
        return f"{predicate.field} {predicate.op.value} [{', '.join(_quote(v) for v in predicate.value)}]"
    return f"{predicate.field} {predicate.op.value} {_quote(predicate.value)}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


PROFILE_EVENTS = ("ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') "
                  "AND ts <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC') "
                  "AND (has({cookies:Array(String)}, cookie_id) OR has({fps:Array(String)}, fp_id))")


def _activity(client: Client, profile: list[str], since_ms: int, as_of_ms: int) -> dict:
    """All of the profile's events in the segment's lookback, eligible or not. Eligible as the
    build reads them: an event that names an opted-out ID (a first-party ID the profile shared
    events with, say) counts nowhere."""
    count, eligible, bots, refused, opted_out, first, last = client.query(
        f"SELECT count(), countIf({ELIGIBLE} AND {opted_in()}), countIf(is_bot = 1), "
        f"countIf(is_bot = 0 AND can_profile = 0), countIf({ELIGIBLE} AND NOT ({opted_in()})), "
        f"min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts)) FROM {EVENTS} WHERE {PROFILE_EVENTS}",
        parameters={"since_ms": since_ms, "as_of_ms": as_of_ms, **_split(profile)}).result_rows[0]
    return {"events": int(count), "eligible_events": int(eligible), "bot_events": int(bots),
            "no_consent_events": int(refused), "opted_out_events": int(opted_out),
            "first": _iso(int(first)) if count else None, "last": _iso(int(last)) if count else None}


def _exclusions(client: Client, profile: list[str], activity: dict, lookback_days: int,
                since_ms: int, as_of_ms: int) -> list[dict]:
    reasons = []
    # The profile's own IDs, and those its events name besides (a first-party ID that opted out
    # is no longer linked to the cookies it was seen with, but its events still name them).
    opted_out = client.query(
        f"SELECT id FROM {OPTOUTS} FINAL WHERE id != '' AND (has({{ids:Array(String)}}, id) OR id IN ("
        f"SELECT arrayJoin([cookie_id, fp_id]) FROM {EVENTS} WHERE {PROFILE_EVENTS})) ORDER BY id",
        parameters={"ids": sorted({i[2:] for i in profile}), "since_ms": since_ms, "as_of_ms": as_of_ms,
                    **_split(profile)}).result_rows
    if opted_out:
        left_out = f" ({activity['opted_out_events']} events of the profile's left out)" \
            if activity["opted_out_events"] else ""
        reasons.append({"code": "opted_out",
                        "message": f"opted out: {', '.join(r[0] for r in opted_out)}{left_out}"})
    if activity["events"] == 0:
        reasons.append({"code": "no_events",
                        "message": f"no events in its window (as-of's day and the {lookback_days} days before)"})
    elif activity["bot_events"] == activity["events"]:
        reasons.append({"code": "bot_only", "message": "only bot traffic"})
    elif activity["no_consent_events"] == activity["events"] - activity["bot_events"]:
        reasons.append({"code": "no_profiling_consent", "message": "no profiling consent on any event"})
    return reasons


def _membership(client: Client, segment_id: int, cookie_id: str) -> dict:
    """Whether the cookie is in the current members, and since (or until) when by the history."""
    params = {"segment_id": segment_id, "id": cookie_id, "open": OPEN_INTERVAL}
    members = client.query(
        "SELECT build_id, profile_id FROM crumb.segment_members "
        "WHERE segment_id = {segment_id:UInt32} AND id = {id:String} AND id_type = 'cookie' LIMIT 1",
        parameters=params).result_rows
    last = client.query(
        "SELECT toUnixTimestamp64Milli(entered_at), toUnixTimestamp64Milli(exited_at), "
        "exited_at = toDateTime64({open:String}, 3, 'UTC') FROM crumb.segment_history "
        "WHERE segment_id = {segment_id:UInt32} AND id = {id:String} AND id_type = 'cookie' "
        "ORDER BY entered_at DESC, exited_at DESC LIMIT 1", parameters=params).result_rows
    entered, exited, is_open = last[0] if last else (None, None, False)
    return {
        "is_member": bool(members), "build_id": int(members[0][0]) if members else None,
        "profile_id": members[0][1] if members else None,
        "since": _iso(entered) if members and is_open else None,
        "left_at": _iso(exited) if not members and last and not is_open else None,
    }


def _iso(at_ms: int | None) -> str | None:
    if at_ms is None:
        return None
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_text(explanation: dict) -> str:
    """The explanation as an indented tree, for a terminal."""
    e, member = explanation, explanation["member"]
    lines = [
        f"segment {e['segment_id']} ({e['name']}) · cookie {e['cookie_id']} · as of {e['as_of']} ({e['as_of_source']})",
        f"profile {e['profile']['profile_id']}: " + ", ".join(f"{i['id_type']} {i['id']}" for i in e["profile"]["ids"]),
        f"by the rule: {'IN' if e['in_by_rule'] else 'OUT'}",
        "current members: " + (
            f"yes (build {member['build_id']}" + (f", since {member['since']})" if member["since"] else ")")
            if member["is_member"] else "no" + (f" (left at {member['left_at']})" if member["left_at"] else "")),
    ]
    activity = e["activity"]
    lines.append(f"lookback: {activity['events']} events, {activity['eligible_events']} eligible, "
                 f"{activity['bot_events']} from bots, {activity['no_consent_events']} without profiling consent")
    lines += [f"excluded: {reason['message']}" for reason in e["excluded"]]
    lines += _render_node(e["rule"], 0)
    return "\n".join(lines)


def _render_node(node: dict, depth: int) -> list[str]:
    mark, pad = "✓" if node["held"] else "✗", "  " * depth
    if node["kind"] == "condition":
        return [f"{pad}{mark} {_condition_text(node)}"]
    title = f"segment {node['segment_id']} ({node['name']})" if node["kind"] == "segment" else node["kind"]
    return [f"{pad}{mark} {title}"] + [line for child in node["children"] for line in _render_node(child, depth + 1)]


def _condition_text(node: dict) -> str:
    what = node["label"] or (" and ".join(node["predicates"]) or "any event")
    found, bounds = node["found"], node["bounds"]
    seen = f"{found['count']} events on {found['days']} days, {found['engaged_ms']} ms engaged"
    if found["count"]:
        seen += f", {found['first']} … {found['last']}"
    needs = [f"count ≥ {bounds['min_count']}"] + [
        text for key, text in (("max_count", "count ≤ {}"), ("min_days", "days ≥ {}"),
                               ("min_engaged_ms", "engaged ≥ {} ms")) if bounds[key] is not None
        for text in [text.format(bounds[key])]]
    verdict = "" if node["held"] else f" — {'; '.join(node['failed'])}"
    return f"{what} within {node['window_days']} days: {seen}; needs {', '.join(needs)}{verdict}"
