"""Lookalike at scale: features + training + scoring of a population of simulated profiles.

A child process bulk-loads the simulator's traffic (`--profiles` cookies with planted interests)
into a fresh temporary chdb directory and writes the seed (half the cookies of one interest) and
the interest's other members; then this process opens that warehouse and runs one lookalike at
5% reach, so its peak RSS is the lookalike's (and chdb's), not the loader's.

Reported, in one run: time per step (features, train, score, select), peak RSS, and for each
method (logistic regression by SGD, cosine to the seed centroid) the validation AUC and lift at
5% reach; plus the ground-truth lift of the chosen audience: how much more often the interest's
other members are in it than in a random 5%.

    python bench/lookalike.py [--profiles 1000000] [--events-per-profile 6] [--interest soccer]

Targets on the two-core reference machine: peak RSS ≤ 2 GB, train + score ≤ 120 s.
Numbers go to the terminal and to bench/results/lookalike.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
END = datetime(2060, 6, 1, tzinfo=UTC)
DAYS = 14
RESULTS = ROOT / "bench" / "results" / "lookalike.json"


def load(directory: Path, profiles: int, events_per_profile: float, interest: str) -> None:
    """In a child process: simulate, load, and write the seed and the interest's other members."""
    import clickhouse_connect

    from crumb.migrations import Dialect, apply
    from crumb.simulator import SimulationSpec, load_bulk, read_ground_truth

    client = clickhouse_connect.get_client(dsn=f"chdb://{directory / 'warehouse'}")
    apply(client, Dialect())
    spec = SimulationSpec(cookies=profiles, days=DAYS, seed=11, end=END, events_per_cookie=events_per_profile)
    started = time.perf_counter()
    loaded = load_bulk(client, spec, truth_path=directory / "truth.jsonl")
    members = [c for c in read_ground_truth(directory / "truth.jsonl").with_interest(interest)]
    eligible = [c for c in members if not c.is_bot and c.consent != "gdpr_no_profile"]
    seed = random.Random(5).sample(eligible, len(eligible) // 2)
    seed_ids = {f"c:{c.cookie_id}" for c in seed}
    others = [f"c:{c.cookie_id}" for c in members if f"c:{c.cookie_id}" not in seed_ids]
    (directory / "seed.json").write_text(json.dumps({
        "seed": sorted(seed_ids), "others": others, "events": loaded.events,
        "load_s": round(time.perf_counter() - started, 1)}))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(directory: Path, interest: str) -> dict[str, object]:
    import clickhouse_connect

    from audiences.definitions import Lookalike
    from audiences.features import Window
    from audiences.lookalike import LookalikeRun, Seed, render_table

    data = json.loads((directory / "seed.json").read_text())
    client = clickhouse_connect.get_client(dsn=f"chdb://{directory / 'warehouse'}")
    rss_before = peak_rss_mb()
    run = LookalikeRun(client, Lookalike(seed=1, reach=0.05), Seed(1, profiles=tuple(data["seed"])),
                       Window(int(END.timestamp() * 1000), DAYS), segment_id=1)
    started = time.perf_counter()
    result = run.run()
    elapsed = time.perf_counter() - started
    sql, params = run.audience_sql()
    chosen = {row[0] for row in client.query(sql, parameters=params).result_rows}
    others = set(data["others"])
    truth_lift = (len(chosen & others) / len(others)) / (len(chosen) / result["population"])
    print(render_table(result))
    return {
        "profiles": result["population"], "events": data["events"], "seed_profiles": result["seed_profiles"],
        "interest": interest, "load_s": data["load_s"], "seconds": round(elapsed, 1),
        "timings": result["timings"], "chunks": result["chunks"], "peak_rss_mb": round(peak_rss_mb()),
        "rss_before_run_mb": round(rss_before),
        "methods": {name: {"auc": round(m["auc"], 4), "lift_at_5pct": m["lift_at_reach"],
                           "recall_at_5pct": m["recall_at_reach"]} for name, m in result["methods"].items()},
        "chosen": result["method"], "ground_truth_lift_at_5pct": round(truth_lift, 2),
        "targets": {"peak_rss_mb": 2048, "seconds": 120},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events-per-profile", type=float, default=6.0)
    parser.add_argument("--interest", default="soccer")
    parser.add_argument("--load", metavar="DIR", help=argparse.SUPPRESS)  # the child's entry point
    args = parser.parse_args()
    if args.load:
        load(Path(args.load), args.profiles, args.events_per_profile, args.interest)
        return 0
    directory = Path(tempfile.mkdtemp(prefix="crumb-bench-lookalike-"))
    try:
        subprocess.run([sys.executable, __file__, "--load", str(directory), "--profiles", str(args.profiles),
                        "--events-per-profile", str(args.events_per_profile), "--interest", args.interest],
                       check=True)
        report = measure(directory, args.interest)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["peak_rss_mb"] <= 2048 and report["seconds"] <= 120
    print(f"peak RSS {report['peak_rss_mb']} MB, {report['seconds']} s: {'within' if ok else 'OVER'} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
