"""Partner ID sync: which partners are due for a browser, the redirect out, the match coming back.

The request path reads and writes Redis only, in keys hash-tagged by cookie (Redis Cluster):
  crumb:{c:<id>}:sync   partner → epoch seconds of the last attempt or match (the frequency cap)
  crumb:{c:<id>}:m      partner → the partner's user ID
Matches also go to `crumb.id_matches` for batch jobs, buffered and written about once a second
by a background thread (`MatchWriter`), never while a browser waits.

No sync happens (PROTOCOLS.md, ID sync; ARCHITECTURE.md, Privacy rules) without an ID we issued,
after an opt-out, under GPC or a US Privacy opt-out of sale, or, where GDPR applies, without
Purpose 1 and vendor consent for both us and the partner. A callback is accepted only for a sync
we started moments ago (its consent was checked then) or one that carries its consent itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from clickhouse_connect.driver.client import Client

from activation.errors import ActivationError
from activation.partners import Partner, fill, load_partners, macro_values
from collector.consent import decode_consent
from collector.identity import CookieSigner
from crumb.runtime import Runtime
from crumb.warehouse import MAX_DAYS_BACK, on_cluster

log = logging.getLogger("crumb.idsync")

MATCH_TTL_S = 400 * 86_400  # as crumb.id_matches' TTL
CALLBACK_WINDOW_S = 600  # a callback without consent of its own must follow our redirect by this much
MAX_UID_CHARS = 256
MATCH_COLUMNS = ["partner", "id", "partner_uid", "matched_at", "version"]

# The cap, checked and set in one step: two frames loading at once start one sync, not two.
CLAIM_SCRIPT = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if last > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def sync_key(cookie_id: str) -> str:
    return f"crumb:{{c:{cookie_id}}}:sync"


def match_key(cookie_id: str) -> str:
    return f"crumb:{{c:{cookie_id}}}:m"


class BadCallback(ValueError):
    """A callback whose partner ID is malformed: the caller answers 400."""

    code = "bad_partner_uid"


@dataclass(frozen=True, slots=True)
class SyncSignals:
    """A sync request's privacy signals, kept as they came: they are passed on unchanged."""

    gdpr: str = ""  # "1", "0" or "" (unknown)
    gdpr_consent: str = ""
    gpc: bool = False
    us_privacy: str = ""
    gpp: str = ""
    gpp_sid: str = ""
    opted_out: bool = False

    def query(self) -> dict[str, str]:
        """The consent parameters to forward, only those that apply."""
        fields = {"gdpr": self.gdpr, "gdpr_consent": self.gdpr_consent, "us_privacy": self.us_privacy,
                  "gpp": self.gpp, "gpp_sid": self.gpp_sid, "gpc": "1" if self.gpc else ""}
        return {name: value for name, value in fields.items() if value}


@dataclass(frozen=True, slots=True)
class Started:
    url: str = ""  # where to send the browser; empty when refused
    refused: str = ""  # why not: no_id, opted_out, gpc, us_privacy, no_consent, no_partner_consent, not_due


@dataclass(frozen=True, slots=True)
class Completed:
    stored: bool = False
    refused: str = ""
    redirect: str = ""  # a partner's push: where to send the browser back


class IdSync:
    def __init__(
        self, runtime: Runtime, signer: CookieSigner, partners: Iterable[Partner] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.signer = signer
        self.vendor_id = runtime.settings.tcf_vendor_id
        self._clock = clock
        self._partners: dict[str, Partner] = {}
        self.configure(load_partners(runtime.settings.partners_dir).values() if partners is None else partners)
        self._claim: Any = None
        self.counts: Counter[tuple[str, str]] = Counter()  # (partner, outcome) → requests
        self.writer = MatchWriter(self._insert_matches, runtime.settings.flush_interval_s)

    # -- configuration and lifecycle ---------------------------------------------------------

    def configure(self, partners: Iterable[Partner]) -> None:
        """Replace the partner set (at start-up; tests use it at run time)."""
        self._partners = {partner.name: partner for partner in partners}

    @property
    def partners(self) -> list[Partner]:
        return list(self._partners.values())

    def partner(self, name: str) -> Partner | None:
        """An enabled partner by name."""
        partner = self._partners.get(name)
        return partner if partner is not None and partner.enabled else None

    def start(self) -> None:
        self.writer.start()

    def close(self) -> None:
        self.writer.close()

    def flush(self) -> bool:
        """Write buffered matches to crumb.id_matches now; False if the warehouse refused them."""
        return self.writer.flush()

    # -- the three steps ---------------------------------------------------------------------

    def refusal(self, partner: Partner, cookie_id: str | None, signals: SyncSignals) -> str:
        """Why this browser may not sync with this partner; "" when it may."""
        if not cookie_id:
            return "no_id"
        if signals.opted_out:
            return "opted_out"
        if signals.gpc:
            return "gpc"
        if signals.us_privacy[2:3] == "Y":
            return "us_privacy"
        if not self._consent(signals, self.vendor_id).can_store:
            return "no_consent"
        if not self._consent(signals, partner.gvl_id).can_store:
            return "no_partner_consent"
        return ""

    def due_partners(self, cookie_id: str | None, signals: SyncSignals) -> list[Partner]:
        """The enabled partners this browser may sync with and has not synced with lately."""
        allowed = [p for p in self._partners.values() if p.enabled and not self.refusal(p, cookie_id, signals)]
        if not allowed or not cookie_id:
            return []
        last = {_text(k): float(v) for k, v in self._redis.hgetall(sync_key(cookie_id)).items()}
        now = self._clock()
        return [p for p in allowed if last.get(p.name, 0) <= now - p.resync_days * 86_400]

    def start_match(self, partner: Partner, cookie_id: str | None, signals: SyncSignals, callback_base: str) -> Started:
        """The partner's match URL, filled, if this browser may sync and is due (counted as an attempt)."""
        refused = self.refusal(partner, cookie_id, signals)
        if not refused and not self._claim_attempt(partner, cookie_id or ""):
            refused = "not_due"
        if refused:
            self.counts[partner.name, refused] += 1
            return Started(refused=refused)
        self.counts[partner.name, "started"] += 1
        return Started(url=self.match_url(partner, cookie_id or "", signals, callback_base))

    def complete_match(
        self, partner: Partner, cookie_id: str | None, partner_uid: str | None, signals: SyncSignals,
        push: str = "",
    ) -> Completed:
        """Store the partner's ID for this browser when allowed; a push gets its redirect back."""
        redirect = fill(partner.push_url, self._macros(partner, "", signals, push=push)) if push else ""
        if partner_uid is None and push:
            return Completed(redirect=redirect)
        uid = check_uid(partner_uid)
        refused = self.refusal(partner, cookie_id, signals) or self._callback_refusal(partner, cookie_id, signals)
        if not refused and uid in partner.null_uids:
            refused = "no_partner_user"
        if refused:
            self.counts[partner.name, refused] += 1
            return Completed(refused=refused, redirect=redirect)
        self._store(partner, cookie_id or "", uid)
        self.counts[partner.name, "matched"] += 1
        return Completed(stored=True, redirect=redirect)

    def matches(self, cookie_id: str) -> dict[str, str]:
        """The partner IDs matched to one of our IDs (what the request path reads)."""
        return {_text(k): _text(v) for k, v in self._redis.hgetall(match_key(cookie_id)).items()}

    # -- pieces --------------------------------------------------------------------------------

    def match_url(self, partner: Partner, cookie_id: str, signals: SyncSignals, callback_base: str) -> str:
        return fill(partner.match_url, self._macros(partner, cookie_id, signals, callback_base))

    def callback_url(self, partner: Partner, signals: SyncSignals, callback_base: str) -> str:
        """Our callback for redirect-style partners: the consent rides along, and so does the
        partner's own user ID macro (Xandr's `$UID`), which must stay unencoded for it to fill."""
        params = [f"{name}={value}" for name, value in signals.query().items() if name != "gpc"]
        if partner.uid_macro:
            params.append(f"{partner.uid_param}={partner.uid_macro}")
        url = f"{callback_base.rstrip('/')}/sync/{partner.name}/callback"
        return f"{url}?{'&'.join(params)}" if params else url

    def _macros(
        self, partner: Partner, cookie_id: str, signals: SyncSignals, callback_base: str = "", push: str = "",
    ) -> dict[str, str]:
        callback = self.callback_url(partner, signals, callback_base) if callback_base else ""
        gdpr = self._consent(signals, partner.gvl_id).gdpr_applies
        return macro_values(
            partner, cookie_id, gdpr=gdpr, tc_string=signals.gdpr_consent, us_privacy=signals.us_privacy,
            gpp=signals.gpp, gpp_sid=signals.gpp_sid, callback_url=callback, push=push,
        )

    def _consent(self, signals: SyncSignals, vendor_id: int) -> Any:
        return decode_consent(signals.gdpr or None, signals.gdpr_consent, signals.gpc, signals.us_privacy, vendor_id)

    def _callback_refusal(self, partner: Partner, cookie_id: str | None, signals: SyncSignals) -> str:
        if signals.gdpr in ("0", "1"):
            return ""  # the callback carries its own consent, already checked
        last = self._redis.hget(sync_key(cookie_id or ""), partner.name)
        recent = last is not None and float(last) >= self._clock() - CALLBACK_WINDOW_S
        return "" if recent else "not_started"

    def _claim_attempt(self, partner: Partner, cookie_id: str) -> bool:
        if self._claim is None:
            self._claim = self._redis.register_script(CLAIM_SCRIPT)
        return claim(self._claim, cookie_id, partner.name, self._clock(), partner.resync_days * 86_400)

    def _store(self, partner: Partner, cookie_id: str, uid: str) -> None:
        now = self._clock()
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(match_key(cookie_id), partner.name, uid)
        pipe.expire(match_key(cookie_id), MATCH_TTL_S)
        pipe.hset(sync_key(cookie_id), partner.name, f"{now:.3f}")
        pipe.expire(sync_key(cookie_id), MATCH_TTL_S)
        pipe.execute()
        matched_at = datetime.fromtimestamp(now, UTC)
        self.writer.add([partner.name, cookie_id, uid, matched_at, int(now * 1000)])

    def _insert_matches(self, rows: list[list[Any]]) -> None:
        self.runtime.client.insert("crumb.id_matches", rows, column_names=MATCH_COLUMNS)

    @property
    def _redis(self) -> redis.Redis:
        return self.runtime.redis


def claim(script: Any, cookie_id: str, field: str, now: float, interval_s: float) -> bool:
    """Record an attempt of `field` (a partner, or a URL destination) for this browser now, unless
    one was made within `interval_s`; `script` is CLAIM_SCRIPT registered on the Redis client."""
    args = [field, f"{now:.3f}", f"{now - interval_s:.3f}", MATCH_TTL_S]
    return bool(script(keys=[sync_key(cookie_id)], args=args))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def check_uid(value: str | None) -> str:
    """A partner's user ID as we store it: 1 to 256 printable ASCII characters."""
    if value is None or not 0 < len(value) <= MAX_UID_CHARS or not all("!" <= c <= "~" for c in value):
        raise BadCallback("the partner user ID must be 1 to 256 printable ASCII characters")
    return value


class MatchWriter:
    """Buffers match rows and inserts them in batches from a background thread."""

    def __init__(self, insert: Callable[[list[list[Any]]], None], interval_s: float = 1.0,
                 max_rows: int = 100_000) -> None:
        self._insert = insert
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._rows: list[list[Any]] = []
        self._lock = threading.Lock()  # guards _rows
        self._flushing = threading.Lock()  # one insert at a time, rows kept in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row: list[Any]) -> None:
        with self._lock:
            if len(self._rows) >= self._max_rows:  # the warehouse is down for long: Redis still has them
                del self._rows[0]
            self._rows.append(row)
        if self._thread is None:  # started on first use too: a server that never wired start() still writes
            self.start()

    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> bool:
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return True
            try:
                self._insert(rows)
            except Exception:  # the driver raises many kinds; keep the rows and try again later
                log.exception("writing %d ID matches failed; keeping them for the next flush", len(rows))
                with self._lock:
                    self._rows = (rows + self._rows)[-self._max_rows:]
                return False
            return True

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="idsync-matches", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()


# -- report and erasure ------------------------------------------------------------------------

_SEEN = (
    "SELECT cookie_id FROM crumb.events WHERE toDate(ts) >= today() - {days:UInt32} "
    "AND cookie_id != '' AND is_bot = 0 AND can_share = 1"
)


def match_rates(client: Client, since_days: int = 30, partners: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per partner: cookies seen over the window (shareable, not bots), how many of them are
    matched, and the rate. Partners: those named, and any that has matches."""
    if not 1 <= since_days <= MAX_DAYS_BACK:
        raise ActivationError(f"match rates cover 1 to {MAX_DAYS_BACK} days, not {since_days}")
    params = {"days": since_days}
    seen = int(client.query(f"SELECT uniqExact(cookie_id) FROM ({_SEEN})", parameters=params).result_rows[0][0])
    rows = client.query(
        f"SELECT partner, uniqExact(id) FROM crumb.id_matches FINAL WHERE id IN ({_SEEN}) GROUP BY partner",
        parameters=params,
    ).result_rows
    matched = {str(partner): int(count) for partner, count in rows}
    names = sorted(set(partners) | set(matched))
    return [
        {"partner": name, "seen": seen, "matched": matched.get(name, 0),
         "rate": round(matched.get(name, 0) / seen, 4) if seen else 0.0}
        for name in names
    ]


def erase_matches(client: Client, redis_client: redis.Redis, ids: list[str]) -> None:
    """Erasure of IDs from the match table and from both Redis hashes (an Eraser for crumb.privacy)."""
    client.command(f"DELETE FROM crumb.id_matches {on_cluster(client)} WHERE id IN {{ids:Array(String)}}",
                   parameters={"ids": ids})
    for cookie_id in ids:  # one slot per ID: no multi-key DEL across slots on a cluster
        redis_client.delete(match_key(cookie_id), sync_key(cookie_id))
