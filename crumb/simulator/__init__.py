"""Synthetic traffic (`crumb simulate`): cookies with latent interests browsing sites over days.

`World.build(spec)` makes everything deterministic from the seed; `load_bulk` writes the traffic
straight into `crumb.events`, `send_via_http` sends it through a running collector. Both can write
the ground truth (latent interests, bots, converters) that tests and benchmarks check against.
"""

from crumb.simulator.bulk import load_bulk
from crumb.simulator.http import send_via_http
from crumb.simulator.model import Interest, SimulationResult, SimulationSpec, Site, World
from crumb.simulator.truth import CookieTruth, GroundTruth, read_ground_truth, write_ground_truth

__all__ = [
    "CookieTruth", "GroundTruth", "Interest", "SimulationResult", "SimulationSpec", "Site", "World",
    "load_bulk", "read_ground_truth", "send_via_http", "write_ground_truth",
]
