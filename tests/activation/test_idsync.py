"""ID sync: partner templates, consent refusals, the frequency cap, match storage, and the HTTP
surface against the live server and a fake partner on loopback."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from activation.idsync import BadCallback, IdSync, SyncSignals, check_uid, match_key, match_rates, sync_key
from activation.partners import Partner, PartnerConfigError, load_partners
from collector.endpoints import GIF
from collector.identity import new_cookie_id
from tests.activation.partner_server import FakePartner, PartnerServer, partners_configured
from tests.conftest import TEST_VENDOR_ID, LiveServer
from tests.tcf import make_tc_string

DAY = 86_400
OUR_ID = "0123456789abcdef0123456789abcdef"
TC = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID, 21, 32, 755})


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # near now: crumb.id_matches' TTL drops rows 400 days old

    def __call__(self) -> float:
        return self.now


def partner(name: str = "", **fields: object) -> Partner:
    values: dict[str, object] = {
        "name": name or f"p-{uuid.uuid4().hex[:8]}", "gvl_id": 755, "uid_param": "uid", "enabled": True,
        "match_url": "https://partner.example/match?id=${CRUMB_ID}&gdpr=${GDPR}&gdpr_consent=${GDPR_CONSENT_755}",
    }
    return Partner(**{**values, **fields})  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def idsync(live_server: LiveServer, clock: Clock) -> Iterator[IdSync]:
    sync = IdSync(live_server.crumb.runtime, live_server.crumb.activation.idsync.signer, partners=[], clock=clock)
    yield sync
    sync.close()


# -- the shipped templates ------------------------------------------------------------------------


SHIPPED = load_partners(None)
GDPR_SIGNALS = SyncSignals(gdpr="1", gdpr_consent=TC, us_privacy="1YNN")
B64_ID = base64.urlsafe_b64encode(OUR_ID.encode()).decode()


def test_shipped_partners_are_examples_disabled() -> None:
    assert sorted(SHIPPED) == ["google", "ttd", "xandr"]
    assert not any(p.enabled for p in SHIPPED.values())
    assert {p.name: p.gvl_id for p in SHIPPED.values()} == {"google": 755, "ttd": 21, "xandr": 32}


@pytest.mark.parametrize(("name", "expected"), [
    ("google", "https://cm.g.doubleclick.net/pixel?google_nid=YOUR_NID&google_cm&google_hm="
               f"{B64_ID}&gdpr=1&gdpr_consent={TC}"),
    ("ttd", "https://match.adsrvr.org/track/cmf/generic?ttd_pid=YOUR_PARTNER_ID&ttd_tpi=1"
            f"&ttd_puid={OUR_ID}&gdpr=1&gdpr_consent={TC}&us_privacy=1YNN"),
    ("xandr", "https://ib.adnxs.com/getuid?https%3A%2F%2Fc.example.com%2Fsync%2Fxandr%2Fcallback"
              f"%3Fgdpr%3D1%26gdpr_consent%3D{TC}%26us_privacy%3D1YNN%26uid%3D$UID"),
])
def test_shipped_template_filled(idsync: IdSync, name: str, expected: str) -> None:
    assert idsync.match_url(SHIPPED[name], OUR_ID, GDPR_SIGNALS, "https://c.example.com") == expected


def test_google_hm_is_websafe_base64_of_our_id() -> None:
    assert base64.urlsafe_b64decode(B64_ID).decode() == OUR_ID
    assert "+" not in B64_ID and "/" not in B64_ID


def test_google_push_is_answered_with_the_same_value(idsync: IdSync) -> None:
    google = SHIPPED["google"].model_copy(update={"enabled": True})
    done = idsync.complete_match(google, None, None, SyncSignals(), push="AbC-_x/y=")
    assert done.redirect == "https://cm.g.doubleclick.net/pixel?google_nid=YOUR_NID&google_push=AbC-_x%2Fy%3D"
    assert not done.stored


def test_consent_macro_without_gdpr_is_zero_and_empty(idsync: IdSync) -> None:
    url = idsync.match_url(SHIPPED["ttd"], OUR_ID, SyncSignals(), "https://c.example.com")
    assert url.endswith(f"ttd_puid={OUR_ID}&gdpr=0&gdpr_consent=&us_privacy=")


# -- partner files --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "error"), [
    ("name: x\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/?c=${GDPR_CONSENT_2}'",
     "must name the partner's GVL ID 1"),
    ("name: x\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/?c=${NOPE}'", "unknown macro ${NOPE}"),
    ("name: X!\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/'", "name: String should match pattern"),
    ("name: x\ngvl_id: 1\nuid_param: u\nmatch_url: 'ftp://p/'", "must be an http(s) URL"),
    ("name: frame\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/'", "taken by /sync/frame"),
    ("name: x\ngvl_id: 1\nmatch_url: 'https://p/'", "uid_param: Field required"),
    ("name: x\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/'\npush_param: p", "push_param and push_url go together"),
    ("- [1, 2]", "[0]: a partner must be a mapping"),
    ("name: [unclosed", "cannot read"),
])
def test_bad_partner_file_names_file_and_field(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PartnerConfigError) as raised:
        load_partners(tmp_path)
    assert str(raised.value).startswith(str(tmp_path / "p.yaml"))
    assert error in str(raised.value)


def test_partner_defined_twice(tmp_path: Path) -> None:
    entry = "name: x\ngvl_id: 1\nuid_param: u\nmatch_url: 'https://p/'\n"
    (tmp_path / "a.yaml").write_text(entry)
    (tmp_path / "b.yml").write_text(entry)
    with pytest.raises(PartnerConfigError, match="defined twice"):
        load_partners(tmp_path)


# -- consent ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cookie", "signals", "refused"), [
    (True, SyncSignals(), ""),
    (False, SyncSignals(), "no_id"),
    (True, SyncSignals(opted_out=True), "opted_out"),
    (True, SyncSignals(gpc=True), "gpc"),
    (True, SyncSignals(us_privacy="1YYN"), "us_privacy"),
    (True, SyncSignals(us_privacy="1YNN"), ""),
    (True, SyncSignals(gdpr="0"), ""),
    (True, SyncSignals(gdpr="1"), "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent="not-a-tc-string"), "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1}, {TEST_VENDOR_ID, 755})), ""),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({3, 4}, {TEST_VENDOR_ID, 755})), "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1}, {755})), "no_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1}, {TEST_VENDOR_ID})), "no_partner_consent"),
    (True, SyncSignals(gdpr="1", gdpr_consent=make_tc_string({1}, {TEST_VENDOR_ID, 755}, policy_version=3)),
     "no_consent"),
    (True, SyncSignals(gdpr_consent=make_tc_string({1}, {TEST_VENDOR_ID})), "no_partner_consent"),  # gdpr unknown
    (True, SyncSignals(gdpr="1", gdpr_consent=TC, gpc=True), "gpc"),
])
def test_consent_refusals(idsync: IdSync, cookie: bool, signals: SyncSignals, refused: str) -> None:
    p = partner()
    idsync.configure([p])
    cookie_id = new_cookie_id() if cookie else None
    assert idsync.refusal(p, cookie_id, signals) == refused
    assert [x.name for x in idsync.due_partners(cookie_id, signals)] == ([] if refused else [p.name])
    started = idsync.start_match(p, cookie_id, signals, "https://c.example.com")
    assert (started.refused, bool(started.url)) == (refused, not refused)


# -- frequency cap ------------------------------------------------------------------------------


def test_frequency_cap_and_resync(idsync: IdSync, clock: Clock) -> None:
    weekly, daily = partner(), partner(resync_days=1)
    idsync.configure([weekly, daily, partner(enabled=False)])
    cookie_id, signals = new_cookie_id(), SyncSignals()
    assert idsync.due_partners(cookie_id, signals) == [weekly, daily]
    assert idsync.start_match(weekly, cookie_id, signals, "https://c").url
    assert idsync.start_match(weekly, cookie_id, signals, "https://c").refused == "not_due"
    assert idsync.due_partners(cookie_id, signals) == [daily]
    clock.now += DAY + 1
    assert idsync.due_partners(cookie_id, signals) == [daily]
    clock.now += 6 * DAY - 2
    assert idsync.due_partners(cookie_id, signals) == [daily]  # 7 days less a second
    clock.now += 1
    assert idsync.due_partners(cookie_id, signals) == [weekly, daily]


def test_a_match_restarts_the_interval(idsync: IdSync, clock: Clock) -> None:
    p = partner()
    idsync.configure([p])
    cookie_id, signals = new_cookie_id(), SyncSignals()
    assert idsync.start_match(p, cookie_id, signals, "https://c").url
    clock.now += 60
    assert idsync.complete_match(p, cookie_id, "U1", signals).stored
    clock.now += 7 * DAY - 30
    assert idsync.due_partners(cookie_id, signals) == []
    clock.now += 31
    assert idsync.due_partners(cookie_id, signals) == [p]


# -- matches --------------------------------------------------------------------------------------


def test_callback_stores_in_redis_and_warehouse(idsync: IdSync, live_server: LiveServer, clock: Clock) -> None:
    p = partner()
    idsync.configure([p])
    cookie_id, signals = new_cookie_id(), SyncSignals()
    idsync.start_match(p, cookie_id, signals, "https://c")
    assert idsync.complete_match(p, cookie_id, "partner-user-1", signals).stored
    assert idsync.matches(cookie_id) == {p.name: "partner-user-1"}
    redis = live_server.crumb.runtime.redis
    assert 0 < redis.ttl(match_key(cookie_id)) <= 400 * DAY
    assert float(redis.hget(sync_key(cookie_id), p.name) or 0) == clock.now
    assert idsync.flush()
    rows = live_server.query(
        "SELECT partner, id, partner_uid, toUnixTimestamp64Milli(matched_at) FROM crumb.id_matches FINAL "
        "WHERE id = {id:String}", {"id": cookie_id},
    )
    assert rows == [(p.name, cookie_id, "partner-user-1", int(clock.now * 1000))]


def test_callback_without_a_started_sync_needs_its_own_consent(idsync: IdSync, clock: Clock) -> None:
    p = partner()
    idsync.configure([p])
    cookie_id = new_cookie_id()
    assert idsync.complete_match(p, cookie_id, "U", SyncSignals()).refused == "not_started"
    assert idsync.complete_match(p, cookie_id, "U", SyncSignals(gdpr="0")).stored
    idsync.start_match(p, new_id := new_cookie_id(), SyncSignals(), "https://c")
    clock.now += 601
    assert idsync.complete_match(p, new_id, "U", SyncSignals()).refused == "not_started"


def test_callback_refused_by_consent_stores_nothing(idsync: IdSync) -> None:
    p = partner()
    idsync.configure([p])
    cookie_id = new_cookie_id()
    idsync.start_match(p, cookie_id, SyncSignals(), "https://c")
    assert idsync.complete_match(p, cookie_id, "U", SyncSignals(gpc=True)).refused == "gpc"
    assert idsync.matches(cookie_id) == {}


def test_partner_null_uid_is_not_a_match(idsync: IdSync) -> None:
    p = partner(null_uids=("0",))
    idsync.configure([p])
    cookie_id = new_cookie_id()
    idsync.start_match(p, cookie_id, SyncSignals(), "https://c")
    assert idsync.complete_match(p, cookie_id, "0", SyncSignals()).refused == "no_partner_user"


@pytest.mark.parametrize("uid", [None, "", "x" * 257, "has space", "tab\there", "ünïcode", "nul\x00"])
def test_bad_partner_uid(uid: str | None) -> None:
    with pytest.raises(BadCallback):
        check_uid(uid)


def test_match_rates(idsync: IdSync, live_server: LiveServer) -> None:
    p = partner()
    idsync.configure([p])
    seen = [new_cookie_id() for _ in range(3)]
    live_server.client.insert(
        "crumb.events",
        [[uuid.uuid4(), datetime.now(UTC), f"t-{p.name}", "pageview", cookie_id, 1, 0] for cookie_id in seen],
        column_names=["event_id", "ts", "site", "type", "cookie_id", "can_share", "is_bot"],
    )
    for cookie_id in [*seen[:2], new_cookie_id()]:  # the last was never seen in the window
        idsync.complete_match(p, cookie_id, "U", SyncSignals(gdpr="0"))
    assert idsync.flush()
    rates = {r["partner"]: r for r in match_rates(live_server.client, 30, partners=[p.name, "never"])}
    assert rates[p.name]["matched"] == 2
    assert rates[p.name]["seen"] >= 3
    assert rates[p.name]["rate"] == round(2 / rates[p.name]["seen"], 4)
    assert rates["never"]["matched"] == 0


# -- over HTTP against the live server --------------------------------------------------------


@pytest.fixture(scope="module")
def fake_partner(live_server: LiveServer) -> Iterator[PartnerServer]:
    server = PartnerServer(FakePartner()).start()
    yield server
    server.stop()


@pytest.fixture
def live(live_server: LiveServer, fake_partner: PartnerServer) -> Iterator[tuple[IdSync, Partner, Partner]]:
    """The live server's ID sync with two partners on the fake: Xandr-style and Google-style."""
    suffix = uuid.uuid4().hex[:8]
    getuid = partner(f"getuid-{suffix}", match_url=f"{fake_partner.url}/getuid?${{CALLBACK_URL}}",
                     uid_macro="$UID", null_uids=("0",))
    google = partner(
        f"google-{suffix}", uid_param="google_gid", id_encoding="websafe_base64", push_param="google_push",
        match_url=f"{fake_partner.url}/pixel?google_nid=crumb-test&google_cm&google_hm=${{CRUMB_ID}}",
        push_url=f"{fake_partner.url}/pixel?google_nid=crumb-test&google_push=${{PUSH}}",
    )
    fake_partner.partner.callback = f"{live_server.url}/sync/{google.name}/callback"
    idsync = live_server.crumb.activation.idsync
    with partners_configured(idsync, [getuid, google]):
        yield idsync, getuid, google


@pytest.fixture
def browser_cookie(live_server: LiveServer) -> tuple[str, str]:
    """A crumb_id the live server issued: (cookie ID, Cookie header)."""
    cookie_id = new_cookie_id()
    return cookie_id, f"crumb_id={live_server.crumb.activation.idsync.signer.sign(cookie_id)}"


def follow(url: str, collector: str, cookie: str, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """A browser's redirect chain, by hand: our cookie goes only to the collector."""
    responses: list[httpx.Response] = []
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        while len(responses) < 10:
            sent = {**(headers or {}), **({"cookie": cookie} if url.startswith(collector) else {})}
            response = client.get(url, headers=sent)
            responses.append(response)
            if response.status_code != 302:
                break
            url = urljoin(url, response.headers["location"])
    return responses


def test_unknown_or_disabled_partner_is_404(live_server: LiveServer, live: tuple[IdSync, Partner, Partner]) -> None:
    for path in ("/sync/nobody", "/sync/nobody/callback", "/sync/xandr", "/sync/google/callback"):
        response = httpx.get(live_server.url + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "unknown_partner"


def test_frame_lists_due_partners_with_consent(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                               browser_cookie: tuple[str, str]) -> None:
    _, getuid, google = live
    url = f"{live_server.url}/sync/frame?gdpr=1&gdpr_consent={TC}"
    response = httpx.get(url, headers={"cookie": browser_cookie[1]})
    assert response.status_code == 200
    assert response.headers["cache-control"].startswith("no-store")
    assert "set-cookie" not in response.headers
    sources = re.findall(r'<img src="([^"]+)"', response.text)
    assert sources == [f"/sync/{p.name}?gdpr=1&amp;gdpr_consent={TC}" for p in (getuid, google)]
    assert re.findall(r"<img", httpx.get(url).text) == []  # no ID: nothing to sync
    assert re.findall(r"<img", httpx.get(url, headers={"cookie": browser_cookie[1], "sec-gpc": "1"}).text) == []


def test_start_redirects_then_is_capped(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                        fake_partner: PartnerServer, browser_cookie: tuple[str, str]) -> None:
    cookie_id, cookie = browser_cookie
    _, _, google = live
    first = httpx.get(f"{live_server.url}/sync/{google.name}", headers={"cookie": cookie})
    assert first.status_code == 302
    hm = base64.urlsafe_b64encode(cookie_id.encode()).decode()
    assert first.headers["location"] == f"{fake_partner.url}/pixel?google_nid=crumb-test&google_cm&google_hm={hm}"
    again = httpx.get(f"{live_server.url}/sync/{google.name}", headers={"cookie": cookie})
    assert (again.status_code, again.content, again.headers["cache-control"][:8]) == (200, GIF, "no-store")


@pytest.mark.parametrize(("headers", "query"), [
    ({"sec-gpc": "1"}, ""), ({}, "?gpc=1"), ({}, "?us_privacy=1YYN"), ({}, "?gdpr=1"),
    ({}, "?gdpr=1&gdpr_consent=" + make_tc_string({1}, {TEST_VENDOR_ID})),
])
def test_start_refused_answers_the_gif(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                       browser_cookie: tuple[str, str], headers: dict[str, str], query: str) -> None:
    _, getuid, _ = live
    response = httpx.get(f"{live_server.url}/sync/{getuid.name}{query}",
                         headers={**headers, "cookie": browser_cookie[1]})
    assert (response.status_code, response.content) == (200, GIF)


def test_start_without_our_cookie_or_opted_out(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                                browser_cookie: tuple[str, str]) -> None:
    _, getuid, _ = live
    forged = f"crumb_id={new_cookie_id()}.0123456789abcdef"
    for cookie in (None, forged, f"{browser_cookie[1]}; crumb_optout=1"):
        response = httpx.get(f"{live_server.url}/sync/{getuid.name}", headers={"cookie": cookie} if cookie else {})
        assert (response.status_code, response.content) == (200, GIF)
        assert "set-cookie" not in response.headers


def test_getuid_chain_through_the_fake_partner(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                               fake_partner: PartnerServer, browser_cookie: tuple[str, str]) -> None:
    idsync, getuid, _ = live
    cookie_id, cookie = browser_cookie
    chain = follow(f"{live_server.url}/sync/{getuid.name}?gdpr=1&gdpr_consent={TC}", live_server.url, cookie)
    assert [r.status_code for r in chain] == [302, 302, 200]
    assert "$UID" in chain[0].headers["location"]
    assert chain[1].headers["location"].startswith(f"{live_server.url}/sync/{getuid.name}/callback?gdpr=1&")
    assert chain[-1].content == GIF
    uid = fake_partner.partner.seen[-1].uid
    assert idsync.matches(cookie_id) == {getuid.name: uid}
    assert idsync.flush()
    assert live_server.query("SELECT partner_uid FROM crumb.id_matches FINAL WHERE id = {id:String}",
                             {"id": cookie_id}) == [(uid,)]


def test_google_chain_through_the_fake_partner(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                               fake_partner: PartnerServer, browser_cookie: tuple[str, str]) -> None:
    idsync, _, google = live
    cookie_id, cookie = browser_cookie
    chain = follow(f"{live_server.url}/sync/{google.name}", live_server.url, cookie)
    assert [r.status_code for r in chain] == [302, 302, 200], [s.error for s in fake_partner.partner.seen]
    assert "google_cver=1" in chain[1].headers["location"]
    assert idsync.matches(cookie_id) == {google.name: fake_partner.partner.seen[-1].uid}


def test_google_push(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                     browser_cookie: tuple[str, str], fake_partner: PartnerServer) -> None:
    idsync, _, google = live
    cookie_id, cookie = browser_cookie
    response = httpx.get(f"{live_server.url}/sync/{google.name}/callback?google_push=opaque%2B1&google_gid=G9&gdpr=0",
                         headers={"cookie": cookie})
    assert response.status_code == 302
    assert response.headers["location"] == f"{fake_partner.url}/pixel?google_nid=crumb-test&google_push=opaque%2B1"
    assert idsync.matches(cookie_id) == {google.name: "G9"}


@pytest.mark.parametrize("query", ["", "?uid=", "?uid=" + "x" * 257, "?uid=a%20b", "?uid=%00", "?uid=%C3%A9"])
def test_bad_callback_is_400(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                             browser_cookie: tuple[str, str], query: str) -> None:
    _, getuid, _ = live
    response = httpx.get(f"{live_server.url}/sync/{getuid.name}/callback{query}", headers={"cookie": browser_cookie[1]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_partner_uid"


def test_callback_refused_still_answers_the_gif(live_server: LiveServer, live: tuple[IdSync, Partner, Partner],
                                                browser_cookie: tuple[str, str]) -> None:
    idsync, getuid, _ = live
    cookie_id, cookie = browser_cookie
    response = httpx.get(f"{live_server.url}/sync/{getuid.name}/callback?uid=U1", headers={"cookie": cookie})
    assert (response.status_code, response.content) == (200, GIF)  # no sync was started: not stored
    assert idsync.matches(cookie_id) == {}
