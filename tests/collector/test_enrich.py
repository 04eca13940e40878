import ipaddress
import re
import time
from urllib.parse import quote, unquote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.enrich import (
    MAX_URL_CHARS,
    UrlParts,
    UserAgentInfo,
    is_sensitive_param,
    parse_user_agent,
    referrer_host,
    scrub_props,
    scrub_url,
    split_url,
    truncate_ip,
)

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)
SMART_TV = (
    "Mozilla/5.0 (SMART-TV; Linux; Tizen 2.4.0) AppleWebKit/538.1 (KHTML, like Gecko) "
    "Version/2.4.0 TV Safari/538.1"
)


@pytest.mark.parametrize(("ip", "truncated"), [
    ("203.0.113.77", "203.0.113.0"),
    ("10.0.0.255", "10.0.0.0"),
    ("0.0.0.0", "0.0.0.0"),
    (" 203.0.113.77 ", "203.0.113.0"),
    ("2001:db8:abcd:12::1", "2001:db8:abcd::"),
    ("2001:0DB8:ABCD:0012:0000:0000:0000:0001", "2001:db8:abcd::"),
    ("fe80::1%eth0", "fe80::"),
    ("::1", "::"),
    ("::ffff:203.0.113.77", "203.0.113.0"),
    ("::ffff:cb00:714d", "203.0.113.0"),
    ("", ""),
    ("garbage", ""),
    ("256.1.1.1", ""),
    ("01.2.3.4", ""),
    ("1.2.3", ""),
    ("1.2.3.4.5", ""),
    ("1.2.3.4:8080", ""),
    ("\u0661.2.3.4", ""),  # an Arabic-Indic digit: isdigit() says yes, an IP it is not
    ("2001:db8::g", ""),
])
def test_truncate_ip(ip: str, truncated: str) -> None:
    assert truncate_ip(ip) == truncated


@given(st.ip_addresses())
def test_truncate_ip_keeps_only_the_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    v4 = address if address.version == 4 else address.ipv4_mapped
    if v4 is not None:
        assert truncate_ip(str(address)) == str(ipaddress.IPv4Address(int(v4) >> 8 << 8))
    else:
        assert truncate_ip(str(address)) == str(ipaddress.IPv6Address(int(address) >> 80 << 80))


@pytest.mark.parametrize(("ua", "expected"), [
    (IPHONE, UserAgentInfo("mobile", "iOS", "Mobile Safari", False)),
    (ANDROID_CHROME, UserAgentInfo("mobile", "Android", "Chrome Mobile", False)),
    (IPAD, UserAgentInfo("tablet", "iOS", "Mobile Safari", False)),
    (WINDOWS_CHROME, UserAgentInfo("desktop", "Windows", "Chrome", False)),
    (SMART_TV, UserAgentInfo("other", "Tizen", "Safari", False)),
    (HEADLESS_CHROME, UserAgentInfo("bot", "Linux", "HeadlessChrome", True)),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", UserAgentInfo("bot", "Other", "Googlebot", True)),
    ("curl/8.4.0", UserAgentInfo("bot", "Other", "curl", True)),
    ("python-requests/2.31.0", UserAgentInfo("bot", "Other", "Python Requests", True)),
    ("", UserAgentInfo("bot", "Other", "Other", True)),
    ("   ", UserAgentInfo("bot", "Other", "Other", True)),
])
def test_parse_user_agent(ua: str, expected: UserAgentInfo) -> None:
    assert parse_user_agent(ua) == expected


@pytest.mark.parametrize("ua", [
    "Wget/1.21", "python-httpx/0.27", "Go-http-client/2.0", "Java/17.0.2", "Scrapy/2.11",
    "Mozilla/5.0 (compatible; bingbot/2.0)", "Mozilla/5.0 (compatible; Yahoo! Slurp)",
    "Mozilla/5.0 Chrome-Lighthouse", "Pingdom.com_bot_version_1.4", "UptimeRobot/2.0",
    "Mozilla/5.0 PhantomJS/2.1.1", "Baiduspider+(+http://www.baidu.com/search/spider.htm)",
    "SomeCrawler/1.0",
])
def test_tools_and_crawlers_are_bots(ua: str) -> None:
    info = parse_user_agent(ua)
    assert info.is_bot and info.device_type == "bot"


def test_user_agent_is_truncated_before_caching() -> None:
    long_ua = WINDOWS_CHROME + " x" * 5_000
    assert parse_user_agent(long_ua) is parse_user_agent(long_ua[:512] + "different tail")


@pytest.mark.parametrize(("url", "scrubbed"), [
    ("https://shop.example.com/a?b=c", "https://shop.example.com/a?b=c"),
    ("https://shop.example.com/a?email=jo@x.com&b=c", "https://shop.example.com/a?b=c"),
    ("https://x.com/?E-Mail=1&userEmail=2&user_email=3&mail=4&b=c", "https://x.com/?b=c"),
    ("https://x.com/?phone=1&tel=2&mobile=3&Telephone=4", "https://x.com/"),
    ("https://x.com/?token=1&access_token=2&auth=3&password=4&passwd=5&pwd=6&secret=7", "https://x.com/"),
    ("https://x.com/?session=1&sessionid=2&SessionID=3&session_id=4&ssn=5", "https://x.com/"),
    ("https://x.com/?name=1&firstname=2&first_name=3&lastName=4&fname=5&lname=6", "https://x.com/"),
    ("https://x.com/?address=1&zip=2&postcode=3&dob=4&birthdate=5", "https://x.com/"),
    ("https://x.com/?card=1&cc=2&cvv=3&iban=4&apikey=5&api_key=6&API-KEY=7&key=8", "https://x.com/"),
    ("https://x.com/?e%6Dail=jo&b=c", "https://x.com/?b=c"),  # a percent-encoded name
    # near misses stay: "hotel" holds "tel", "success" holds "cc", "keyword" starts with "key"
    ("https://x.com/?hotel=ritz&success=1&accent=2&keyword=shoes", "https://x.com/?hotel=ritz&success=1&accent=2&keyword=shoes"),
    ("https://x.com/?utm_source=news&utm_medium=email&utm_campaign=bf", "https://x.com/?utm_source=news&utm_medium=email&utm_campaign=bf"),
    ("https://x.com/?utm_content=jo%40x.com", "https://x.com/?utm_content=[redacted]"),
    ("https://x.com/?q=write+to+jo@x.com+now", "https://x.com/?q=[redacted]+now"),  # "+" may be in an address
    ("https://x.com/?q=write%20to%20jo%2Bnews@x.com", "https://x.com/?q=write%20to%20[redacted]"),
    ("https://x.com/?q=jo%2540x.com", "https://x.com/?q=[redacted]"),  # encoded twice
    ("https://x.com/?q=call+%2B44+20+7946+0958", "https://x.com/?q=call+[redacted]"),
    ("https://x.com/?q=555-123-4567", "https://x.com/?q=[redacted]"),
    ("https://x.com/?q=(555)+123+4567", "https://x.com/?q=[redacted]"),
    ("https://x.com/?order=12345678", "https://x.com/?order=[redacted]"),
    ("https://x.com/?id=123456&date=2024-01-15&sku=AB12345678", "https://x.com/?id=123456&date=2024-01-15&sku=AB12345678"),
    ("https://x.com/users/jo.doe@example.com/orders", "https://x.com/users/[redacted]/orders"),
    ("https://x.com/users/jo.doe%40example.com/orders", "https://x.com/users/[redacted]/orders"),
    ("https://x.com/2024/01/15/story", "https://x.com/2024/01/15/story"),
    ("https://x.com/call/+44-20-7946-0958", "https://x.com/call/[redacted]"),
    ("https://user:secret@x.com/a", "https://x.com/a"),
    ("https://jo%40x.com@x.com/a", "https://x.com/a"),
    ("https://x.com/a#to:jo@x.com", "https://x.com/a#to:[redacted]"),
    ("https://x.com/cb#access_token=abc&token_type=bearer&state=ok", "https://x.com/cb#state=ok"),
    ("https://x.com/#/checkout?email=jo@x.com&step=2", "https://x.com/#/checkout?step=2"),
    ("https://x.com/a?email=jo@x.com", "https://x.com/a"),
    ("https://x.com/a?email=jo@x.com#", "https://x.com/a"),
    ("mailto:jo@x.com", "mailto:[redacted]"),
    ("/relative/path?email=a&b=1", "/relative/path?b=1"),
    ("", ""),
    ("http://[::1", "http://[::1"),
    ("https://x.com/p?x=%E2%82%AC&y=%ZZ&z=%", "https://x.com/p?x=%E2%82%AC&y=%ZZ&z=%"),
    ("https://x.com/caf\u00e9?q=\u00fc", "https://x.com/caf\u00e9?q=\u00fc"),
])
def test_scrub_url(url: str, scrubbed: str) -> None:
    assert scrub_url(url) == scrubbed


@pytest.mark.parametrize("name", ["utm_source", "page", "q", "gclid", "fbclid", "ref", "color", "monkey"])
def test_ordinary_param_names_are_not_sensitive(name: str) -> None:
    assert not is_sensitive_param(name)


def test_scrub_url_caps_length_after_scrubbing() -> None:
    email_at_the_end = "https://x.com/?" + "a=1&" * 600 + "q=jo@x.com"
    scrubbed = scrub_url(email_at_the_end)
    assert len(scrubbed) == MAX_URL_CHARS
    assert "@" not in scrub_url("https://x.com/?" + "email=" + "x" * 3000 + "&q=jo@x.com")


def test_scrub_url_is_linear_on_hostile_input() -> None:
    hostile = ["a" * 200_000 + "@", "1 " * 100_000 + "x", "%25" * 50_000 + "40", "a." * 100_000 + "@b"]
    started = time.perf_counter()
    for url in hostile:
        assert len(scrub_url(url)) <= MAX_URL_CHARS
    assert time.perf_counter() - started < 2


def test_scrub_url_is_idempotent_on_realistic_urls() -> None:
    url = "https://user:pw@x.com/u/jo@x.com?email=a&q=call+555-123-4567&utm_source=n#t=jo%40x.com"
    once = scrub_url(url)
    assert scrub_url(once) == once


# E-mail addresses whose local part holds no URL delimiter: put in a URL they stay one piece.
_EMAILS = st.emails().filter(lambda email: not set(email.rpartition("@")[0]) & set("/?#&=%"))
_PLAIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", max_size=12)
_ANYWHERE = st.sampled_from([
    "https://{p}.com/{p}/{e}?{p}={p}",
    "https://x.com/{p}?{p}={e}&a=1",
    "https://x.com/{p}?q={p}+{e}+{p}",
    "https://x.com/{p}#{e}",
    "https://x.com/#/{p}?{p}={e}",
    "https://{e}/{p}",
    "https://{e}@x.com/{p}",
    "{p}/{e}",
    "https://x.com/{p}?{e}",
])


@settings(max_examples=300)
@given(_EMAILS, _ANYWHERE, _PLAIN, st.booleans())
def test_scrub_url_never_lets_an_email_through(email: str, template: str, filler: str, encode: bool) -> None:
    placed = quote(email, safe="") if encode else email
    scrubbed = scrub_url(template.replace("{e}", placed).replace("{p}", filler))
    for form in (email, email.lower(), quote(email, safe=""), quote(email)):
        assert form not in scrubbed and form not in unquote_plus(scrubbed)
    assert "@" + email.rpartition("@")[2] not in unquote_plus(scrubbed)


@settings(max_examples=300)
@given(st.one_of(st.text(), st.text(alphabet="%@?#&=+/:.[]aZ09 \u00e9\ud800", max_size=300)))
def test_scrub_url_never_raises(url: str) -> None:
    scrubbed = scrub_url(url)
    assert isinstance(scrubbed, str) and len(scrubbed) <= MAX_URL_CHARS
    assert isinstance(split_url(url), UrlParts)
    assert isinstance(referrer_host(url), str)


@pytest.mark.parametrize(("url", "parts"), [
    (
        "https://Shop.Example.COM:8443/a/b?utm_source=news&utm_medium=email&utm_campaign=bf+2025"
        "&utm_term=red%20shoes&utm_content=hero&x=1#top",
        UrlParts("shop.example.com", "/a/b", "news", "email", "bf 2025", "red shoes", "hero"),
    ),
    ("https://user:pw@x.com", UrlParts("x.com", "/", "", "", "", "", "")),
    ("https://x.com./p?UTM_SOURCE=a&utm_source=b", UrlParts("x.com", "/p", "a", "", "", "", "")),
    ("http://[2001:db8::1]:8080/p", UrlParts("2001:db8::1", "/p", "", "", "", "", "")),
    ("/only/a/path?utm_source=a", UrlParts("", "/only/a/path", "a", "", "", "", "")),
    (
        "https://x.com/u/jo@x.com?utm_content=jo@x.com",
        UrlParts("x.com", "/u/[redacted]", "", "", "", "", "[redacted]"),
    ),
    ("", UrlParts("", "", "", "", "", "", "")),
])
def test_split_url(url: str, parts: UrlParts) -> None:
    assert split_url(url) == parts


def test_utm_values_are_capped() -> None:
    assert split_url("https://x.com/?utm_campaign=" + "c" * 1000).utm_campaign == "c" * 256


@pytest.mark.parametrize(("url", "host"), [
    ("https://WWW.Google.com:443/search?q=x", "www.google.com"),
    ("https://jo:pw@news.example.org/", "news.example.org"),
    ("android-app://com.google.android.gm/", "com.google.android.gm"),
    ("//cdn.example.net/x", "cdn.example.net"),
    ("", ""),
    ("not a url", ""),
    ("/relative", ""),
])
def test_referrer_host(url: str, host: str) -> None:
    assert referrer_host(url) == host


def test_scrub_props() -> None:
    props = {
        "plan": "pro", "email": "jo@x.com", "userPhone": "1", "note": "call +1 (555) 123-4567",
        "link": "https://x.com/?token=t&a=2", "hidden": "jo%40x.com", "size": "42",
    }
    assert scrub_props(props) == {
        "plan": "pro", "note": "call [redacted]", "link": "https://x.com/?a=2", "hidden": "[redacted]",
        "size": "42",
    }


def test_no_email_pattern_survives_in_props() -> None:
    scrubbed = scrub_props({"comment": "mail me: a.b+c@sub.example.co.uk or x_y@z.io"})
    assert not re.search(r"@\w", scrubbed["comment"])
