"""Removals an erasure owes the destinations, kept in `crumb.pending_removals` until sent.

Erasing an ID (crumb/privacy.py) moves its `crumb.delivered` rows — which destination holds it in
which segment, under which partner ID — into `crumb.pending_removals`. The next sync of each
destination (activation/runner.py) sends them as ordinary removals, with its rate limit, retries
and dead letters, and deletes each row only after its outcome is recorded: the table is its own
checkpoint, so a crash re-sends (removals are idempotent on every platform) and never skips.
The partner ID travels with the row because erasure also deletes the ID's match table rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from clickhouse_connect.driver.client import Client

from crumb.warehouse import on_cluster

CHUNK_ROWS = 20_000


def queue_removals(client: Client, ids: Sequence[str]) -> None:
    """Move the IDs' present ledger rows to the removals queue, then drop all their ledger rows.
    Run twice (a crash between the steps), it queues the same rows again: they replace."""
    client.command(
        "INSERT INTO crumb.pending_removals (destination, id, segment_id, partner_uid, erased_at) "
        "SELECT destination, id, segment_id, partner_uid, now64(3) FROM crumb.delivered FINAL "
        "WHERE id IN {ids:Array(String)} AND present = 1",
        parameters={"ids": list(ids)},
    )
    client.command(f"DELETE FROM crumb.delivered {on_cluster(client)} WHERE id IN {{ids:Array(String)}}",
                   parameters={"ids": list(ids)})


def stream_removals(
    client: Client, destination: str, chunk_rows: int = CHUNK_ROWS,
) -> Iterator[list[tuple[str, int, str]]]:
    """(id, segment_id, partner_uid) owed to the destination, in keyset-paged chunks."""
    after: tuple[str, int] = ("", 0)
    while True:
        rows = client.query(
            "SELECT id, segment_id, partner_uid FROM crumb.pending_removals FINAL "
            "WHERE destination = {d:String} AND (id, segment_id) > ({after_id:String}, {after_segment:UInt32}) "
            "ORDER BY id, segment_id LIMIT {limit:UInt32}",
            parameters={"d": destination, "after_id": after[0], "after_segment": after[1], "limit": chunk_rows},
        ).result_rows
        if not rows:
            return
        yield [(str(i), int(s), str(u)) for i, s, u in rows]
        after = (str(rows[-1][0]), int(rows[-1][1]))
        if len(rows) < chunk_rows:
            return


def clear_removals(client: Client, destination: str, done: Sequence[tuple[str, int]]) -> None:
    """Forget removals whose outcome (delivered, dead-lettered, or unsendable) is recorded."""
    if done:
        client.command(
            f"DELETE FROM crumb.pending_removals {on_cluster(client)} WHERE destination = {{d:String}} "
            "AND (id, segment_id) IN {done:Array(Tuple(String, UInt32))}",
            parameters={"d": destination, "done": [tuple(pair) for pair in done]},
        )
