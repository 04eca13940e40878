"""Activation sync throughput: deltas per second `sync_all` delivers to the local TTD server.

A fresh embedded warehouse gets N deltas (one build, 4 segments, every ID matched to a TDID);
`sync_all` pushes them over real HTTP to the TTD conformance server (in this process, on
loopback) with 1000 items a request and 4 concurrent callers. The baseline is the TTD adapter
alone pushing the same items straight from memory, so the ratio runner/adapter is the cost of the
warehouse side (streaming deltas, the match join, the ledger inserts), measured in one run.

    python bench/activation_sync.py [--deltas 200000] [--other-matches 1000000] [--items-per-request 1000]

Numbers go to the terminal and to bench/results/activation_sync.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from activation.destinations import Batch, Item  # noqa: E402
from activation.destinations.config import TTDConfig  # noqa: E402
from activation.destinations.ttd import TTDDestination  # noqa: E402
from activation.runner import Target, sync_all  # noqa: E402
from crumb.progress import SILENT  # noqa: E402
from crumb.runtime import Runtime  # noqa: E402
from crumb.settings import Settings  # noqa: E402
from tests.activation.conformance.ttd import TTDServer  # noqa: E402

SEGMENTS = {7001: "bench_a", 7002: "bench_b", 7003: "bench_c", 7004: "bench_d"}


def load(runtime: Runtime, deltas: int, other_matches: int) -> int:
    """The deltas of one build, their IDs matched; and `other_matches` more IDs matched to the
    partner that this build did not change (a partner's matches are most of the IDs ever seen,
    a build's deltas only those that moved)."""
    client = runtime.client
    ids = [f"{uuid.uuid4()}" for _ in range(deltas // len(SEGMENTS))]
    now = int(time.time() * 1000)
    build_id = 1
    client.insert("crumb.id_deltas", [[build_id, now, i, "cookie", list(SEGMENTS), []] for i in ids],
                  column_names=["build_id", "built_at", "id", "id_type", "entered", "exited"])

    def match(matched: list[str]) -> None:
        client.insert("crumb.id_matches", [["ttd", i, str(uuid.uuid4()), now, 1] for i in matched],
                      column_names=["partner", "id", "partner_uid", "matched_at", "version"])

    match(ids)
    for start in range(0, other_matches, 500_000):  # in batches: a bounded list in memory
        match([str(uuid.uuid4()) for _ in range(min(500_000, other_matches - start))])
    client.insert("crumb.builds", [[build_id, now, now, now, "succeeded", 1]],
                  column_names=["build_id", "started_at", "finished_at", "as_of", "status", "version"])
    return len(ids) * len(SEGMENTS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--items-per-request", type=int, default=1000)
    parser.add_argument("--other-matches", type=int, default=1_000_000,
                        help="IDs matched to the partner that the build did not change")
    args = parser.parse_args()

    server = TTDServer(max_items=args.items_per_request)
    server.server.start()
    with tempfile.TemporaryDirectory() as data_dir, httpx.Client(timeout=30) as http:
        runtime = Runtime(Settings(data_dir=Path(data_dir)))
        runtime.migrate()
        total = load(runtime, args.deltas, args.other_matches)
        config = TTDConfig(name="bench-ttd", type="ttd", advertiser_id="adv1", token_env="TTD_AUTH_TOKEN",
                           partner="ttd", segments=SEGMENTS, rate_limit_per_s=100_000, max_concurrency=4,
                           items_per_request=args.items_per_request)
        adapter = TTDDestination("bench-ttd", server.url, "adv1", "ttd-secret", http,
                                 items_per_request=args.items_per_request)

        started = time.perf_counter()
        (row,) = sync_all(runtime, SILENT, [Target(config, adapter)])
        runner_s = time.perf_counter() - started
        assert row["status"] == "succeeded" and row["sent"] == total, row
        accepted = len(server.accepted)

        items = [Item(str(i), str(uuid.uuid4()), 7001, "bench_a", "enter", 1440) for i in range(total)]
        started = time.perf_counter()
        for start in range(0, total, args.items_per_request):
            adapter.push(Batch(items[start:start + args.items_per_request]))
        adapter_s = time.perf_counter() - started
        runtime.close()
    server.server.stop()

    result = {
        "deltas": total, "other_matches": args.other_matches, "runner_s": round(runner_s, 2),
        "runner_deltas_per_s": round(total / runner_s),
        "adapter_only_deltas_per_s": round(total / adapter_s),
        "ratio_runner_to_adapter": round(adapter_s / runner_s, 2),
        "requests": row["requests"], "platform_accepted": accepted,
    }
    print(json.dumps(result, indent=2))
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "activation_sync.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
