"""Enrichment of a hit into its row, with per-site category rules and the real taxonomy."""

import uuid
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from collector.categories import ContentTaxonomy
from collector.consent import NO_GDPR
from collector.enrich import scrub_props, scrub_url, scrubbed_url_parts, split_url
from collector.hits import Hit, consent_columns
from collector.rows import Enricher
from collector.schema import EVENT_COLUMNS
from collector.sites import load_sites
from tests.conftest import SHARED_DATA

TAXONOMY = ContentTaxonomy.load(SHARED_DATA / "iab-content-taxonomy-3.1.tsv")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.0 Mobile/15E148 Safari/604.1")


def hit(**fields: object) -> Hit:
    values: dict[str, object] = dict(
        event_id="3b9d6f1e-6c1a-4b7e-9f0a-2d4c6e8f0a1b", ts_ms=1, received_ms=2, site="shop", type="pageview",
        cookie_id="a" * 32, fp_id="", url="https://Shop.Example.com/sports/soccer/x?utm_campaign=spring&phone=555",
        referrer="", categories=(), engaged_ms=0, props=(("email", "a@b.co"), ("plan", "pro")), ip="203.0.113.0",
        user_agent=IPHONE, consent=consent_columns(NO_GDPR), source="beacon")
    values.update(fields)
    return Hit(**values)  # type: ignore[arg-type]


def test_a_row_is_enriched_from_rules_taxonomy_and_user_agent(tmp_path: Path) -> None:
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text("sites:\n  shop:\n    origins: ['https://shop.example.com']\n"
                          "    categories:\n      - match: '^/sports/soccer'\n        ids: ['533']\n")
    enricher = Enricher(load_sites(sites_file, TAXONOMY).rules(), TAXONOMY)
    row = dict(zip(EVENT_COLUMNS, enricher.row(hit(categories=("483", "NOPE9")))))
    assert row["categories"] == ("483", "533")  # the tag's known ID, then the rule's; unknown dropped
    assert (row["host"], row["path"], row["utm_campaign"]) == ("shop.example.com", "/sports/soccer/x", "spring")
    assert "555" not in row["url"]
    assert (row["device_type"], row["os"], row["is_bot"]) == ("mobile", "iOS", 0)
    assert row["props"] == (("plan", "pro"),)
    assert len(row) == len(EVENT_COLUMNS)


def test_bots_are_flagged_in_the_device_type() -> None:
    enricher = Enricher(load_sites(None, None).rules(), None)
    row = dict(zip(EVENT_COLUMNS, enricher.row(hit(user_agent="Googlebot/2.1 (+http://www.google.com/bot.html)"))))
    assert (row["device_type"], row["is_bot"]) == ("bot", 1)


@given(st.text(max_size=300) | st.from_regex(r"https?://[a-z.]{1,20}(:[0-9]{2})?/[a-z0-9/%@.+]{0,40}(\?[a-z_=&%@.+0-9]{0,60})?",
                                             fullmatch=True))
def test_the_writers_one_lookup_equals_scrub_then_split(url: str) -> None:
    assert scrubbed_url_parts(url) == (scrub_url(url), split_url(url))


def test_uuids_are_not_mistaken_for_phone_numbers() -> None:
    ids = [str(uuid.uuid4()) for _ in range(2000)] + ["a925a172-1621-4415-9cc6-eb2551fe9162"]
    assert all(scrub_props({"pageview_id": i}) == {"pageview_id": i} for i in ids)
    assert scrub_props({"note": "call +44 20 7946 0958"}) == {"note": "call [redacted]"}



def test_a_long_url_is_enriched_like_a_short_one_and_a_plain_tuple_like_a_hit() -> None:
    enricher = Enricher(load_sites(None, None).rules(), None)
    for path in ("/x", "/" + "x" * 700):  # cached, and past the cached length
        short = hit(url=f"https://Shop.Example.com{path}?utm_source=nl&email=a@b.co")
        row = dict(zip(EVENT_COLUMNS, enricher.row(short)))
        assert (row["host"], row["path"], row["utm_source"]) == ("shop.example.com", path, "nl")
        assert "a@b.co" not in row["url"]
        assert enricher.row(tuple(short)) == enricher.row(short)


def test_a_row_is_plain_data_the_gc_stops_tracking() -> None:
    """Buffered rows cost the garbage collector one look, not one per collection until inserted."""
    import gc

    enricher = Enricher(load_sites(None, None).rules(), None)
    row = enricher.row(hit(categories=("483",), consent=(1, (1, 3), 1, 1, 1, 0, "")))
    for _ in range(3):  # a pass untracks a tuple once what it holds is untracked: one level at a time
        gc.collect()
    assert not gc.is_tracked(row)
