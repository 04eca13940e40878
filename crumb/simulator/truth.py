"""Ground truth of a simulation: what tests and benchmarks check segments and lookalikes against.

JSON Lines. The first line describes the world (`"type": "world"`): seed, window, sites, and each
interest with its categories, section and sites. Then one line per cookie (`"type": "cookie"`):

    {"type": "cookie", "cookie_id": "<id in crumb.events>", "sim_id": "<simulator's id>",
     "fp_id": "<32 hex or empty>", "interests": ["electronics", "soccer"], "is_bot": false,
     "converted": true, "conversion": "purchase", "device_type": "mobile", "consent": "open",
     "events": 23}

In bulk mode `cookie_id` is `sim_id`; through HTTP it is the `crumb_id` the collector assigned
("" if it never set one, e.g. without storage consent).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector.enrich import parse_user_agent
from crumb.simulator.catalogue import CONSENT_CLASSES, EVENT_TYPES
from crumb.simulator.model import World
from crumb.simulator.population import DEVICES

_BLOCK = 50_000


@dataclass(frozen=True)
class CookieTruth:
    cookie_id: str
    sim_id: str
    fp_id: str
    interests: tuple[str, ...]
    is_bot: bool
    converted: bool
    conversion: str | None
    device_type: str
    consent: str
    events: int


@dataclass(frozen=True)
class GroundTruth:
    world: dict[str, Any]
    cookies: list[CookieTruth]

    def with_interest(self, name: str) -> list[CookieTruth]:
        return [c for c in self.cookies if name in c.interests]


def write_ground_truth(world: World, path: Path, assigned_ids: dict[int, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(_world_line(world)) + "\n")
        for start in range(0, len(world.cookies), _BLOCK):
            stop = min(len(world.cookies), start + _BLOCK)
            lines = _cookie_lines(world, start, stop, assigned_ids)
            out.writelines(json.dumps(line) + "\n" for line in lines)
    return path


def read_ground_truth(path: Path) -> GroundTruth:
    lines = iter_lines(path)
    world = next(lines)
    cookies = [_cookie_truth(line) for line in lines]
    return GroundTruth(world, cookies)


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _cookie_truth(line: dict[str, Any]) -> CookieTruth:
    fields = {key: value for key, value in line.items() if key != "type"}
    return CookieTruth(**{**fields, "interests": tuple(fields["interests"])})


def _world_line(world: World) -> dict[str, Any]:
    spec = world.spec
    return {
        "type": "world", "seed": spec.seed, "cookies": spec.cookies, "events": spec.total_events,
        "days": spec.days, "start": _iso(world.start_ms), "end": _iso(world.end_ms),
        "sites": [{"name": s.name, "host": s.host} for s in world.sites],
        "interests": [
            {"name": i.name, "section": i.section, "categories": list(i.categories),
             "sites": [world.sites[s].name for s in i.sites], "conversion": EVENT_TYPES[i.conversion],
             "conversion_rate": i.conversion_rate}
            for i in world.interests
        ],
    }


def _cookie_lines(world: World, start: int, stop: int,
                  assigned_ids: dict[int, str] | None) -> Iterator[dict[str, Any]]:
    cookies = world.cookies
    names = [i.name for i in world.interests]
    device_types = [parse_user_agent(d.user_agent).device_type for d in DEVICES]
    sim_ids = cookies.cookie_ids(start, stop)
    fp_ids = cookies.first_party_ids(start, stop)
    for offset, index in enumerate(range(start, stop)):
        conversion = int(cookies.conversion[index])
        yield {
            "type": "cookie",
            "cookie_id": sim_ids[offset] if assigned_ids is None else assigned_ids.get(index, ""),
            "sim_id": sim_ids[offset],
            "fp_id": fp_ids[offset],
            "interests": [names[k] for k in cookies.interests[index].tolist() if k >= 0],
            "is_bot": bool(cookies.is_bot[index]),
            "converted": conversion >= 0,
            "conversion": EVENT_TYPES[conversion] if conversion >= 0 else None,
            "device_type": device_types[cookies.device[index]],
            "consent": CONSENT_CLASSES[cookies.consent[index]].name,
            "events": int(cookies.events[index]),
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
