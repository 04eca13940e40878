"""ID sync in headless Chromium: the tag's page loads /sync/frame, whose images run the redirect
chain collector → fake partner → collector callback, and the match lands in Redis and in
crumb.id_matches for the browser's crumb_id."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import BrowserContext, Page

from activation.idsync import IdSync
from activation.partners import Partner
from tests.activation.partner_server import FakePartner, PartnerServer, partners_configured
from tests.browser.test_tag import tcf_stub
from tests.conftest import TEST_VENDOR_ID, LiveServer
from tests.tcf import make_tc_string

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def fake_partner() -> Iterator[PartnerServer]:
    server = PartnerServer(FakePartner()).start()
    yield server
    server.stop()


@pytest.fixture
def sync_partners(live_server: LiveServer, fake_partner: PartnerServer,
                  collector_url: str) -> Iterator[tuple[IdSync, list[Partner]]]:
    """Two partners on the fake, one per style: Xandr's getuid and Google's cookie matching."""
    suffix = uuid.uuid4().hex[:8]
    getuid = Partner.model_validate({
        "name": f"getuid-{suffix}", "gvl_id": 755, "enabled": True, "uid_param": "uid", "uid_macro": "$UID",
        "match_url": f"{fake_partner.url}/getuid?${{CALLBACK_URL}}",
    })
    google = Partner.model_validate({
        "name": f"google-{suffix}", "gvl_id": 755, "enabled": True, "uid_param": "google_gid",
        "id_encoding": "websafe_base64",
        "match_url": f"{fake_partner.url}/pixel?google_nid=crumb-test&google_cm&google_hm=${{CRUMB_ID}}"
                     "&gdpr=${GDPR}&gdpr_consent=${GDPR_CONSENT_755}",
    })
    fake_partner.partner.callback = f"{collector_url}/sync/{google.name}/callback"
    idsync = live_server.crumb.activation.idsync
    with partners_configured(idsync, [getuid, google]):
        yield idsync, [getuid, google]


def crumb_id(context: BrowserContext, idsync: IdSync, timeout_s: float = 15) -> str:
    """The browser's verified cookie ID, once the tag's pageview has got one."""
    deadline = time.monotonic() + timeout_s
    while True:
        signed = {c["name"]: c["value"] for c in context.cookies()}.get("crumb_id", "")
        cookie_id = idsync.signer.verify(signed) if signed else None
        if cookie_id:
            return cookie_id
        assert time.monotonic() < deadline, "the tag's pageview set no crumb_id"
        time.sleep(0.05)  # polling: the browser sends on its own schedule


def wait_matches(idsync: IdSync, cookie_id: str, count: int, timeout_s: float = 15) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while len(matches := idsync.matches(cookie_id)) < count:
        assert time.monotonic() < deadline, f"matches so far: {matches}"
        time.sleep(0.05)
    return matches


def sync_frame_images(page: Page) -> int:
    """How many partner images the tag's sync frame on this page carries, once it has loaded."""
    deadline = time.monotonic() + 15
    while not (frames := [f for f in page.frames if "/sync/frame" in f.url]):
        assert time.monotonic() < deadline, "the tag appended no sync frame"
        page.wait_for_timeout(50)
    frames[0].wait_for_load_state()
    return frames[0].locator("img").count()


def test_tag_page_syncs_through_the_fake_partner(
    page: Page, context: BrowserContext, open_tag_page: Callable[..., str], live_server: LiveServer,
    fake_partner: PartnerServer, sync_partners: tuple[IdSync, list[Partner]], page_errors: list[str],
) -> None:
    idsync, partners = sync_partners
    open_tag_page()
    cookie_id = crumb_id(context, idsync)
    assert sync_frame_images(page) == len(partners)

    matches = wait_matches(idsync, cookie_id, len(partners))
    seen = fake_partner.partner.seen
    assert [s.error for s in seen if s.status != 302] == []
    assert {matches[p.name] for p in partners} <= {s.uid for s in seen}
    idsync.flush()
    rows = live_server.query(
        "SELECT partner, partner_uid FROM crumb.id_matches FINAL WHERE id = {id:String} ORDER BY partner",
        {"id": cookie_id},
    )
    assert rows == sorted((p.name, matches[p.name]) for p in partners)
    assert page_errors == []

    # The next page in the same browser: nothing is due, the frame fires no image.
    before = len(seen)
    open_tag_page()
    assert sync_frame_images(page) == 0
    assert len(fake_partner.partner.seen) == before


PARTNER_REFUSED = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID})  # we have consent, the partners (755) don't
BOTH_GRANTED = make_tc_string({1, 3, 4}, {TEST_VENDOR_ID, 755})


@pytest.mark.parametrize(("tc_string", "gpc", "images"), [
    (PARTNER_REFUSED, False, 0),
    (BOTH_GRANTED, True, 0),
    (BOTH_GRANTED, False, 2),  # the control: the same page, consent for all
])
def test_tag_syncs_only_with_consent_and_without_gpc(
    page: Page, context: BrowserContext, open_tag_page: Callable[..., str], fake_partner: PartnerServer,
    sync_partners: tuple[IdSync, list[Partner]], tc_string: str, gpc: bool, images: int,
) -> None:
    idsync, partners = sync_partners
    if gpc:
        context.set_extra_http_headers({"Sec-GPC": "1"})
    open_tag_page(head=tcf_stub(tc_string, [1, 3, 4]))
    cookie_id = crumb_id(context, idsync)
    assert sync_frame_images(page) == images
    if images:
        assert set(wait_matches(idsync, cookie_id, len(partners))) == {p.name for p in partners}
    else:
        assert idsync.matches(cookie_id) == {}
