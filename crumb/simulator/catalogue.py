"""The simulator's fixed vocabulary: interest themes, devices, referrers, campaigns, consent classes.

Everything here is real-world shaped (real IAB Content Taxonomy 3.1 IDs, real User-Agent strings,
documentation-only IP ranges) so the data exercises the same code paths as live traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SITES = ("news-example", "shop-example", "travel-example", "sports-example")

PAGEVIEW, ENGAGEMENT, PURCHASE, SIGNUP = 0, 1, 2, 3
EVENT_TYPES = ("pageview", "engagement", "purchase", "signup")


@dataclass(frozen=True)
class Theme:
    """A latent interest as pages show it: a site section and the categories its pages carry."""

    name: str
    section: str  # path prefix, e.g. "sports/soccer"
    categories: tuple[str, ...]  # Content Taxonomy 3.1 IDs, most specific first
    site_hint: str  # the default site whose name contains this word hosts the section
    conversion: int = PURCHASE
    conversion_rate: float = 0.01  # chance that a cookie with this interest converts


# Category IDs are all in collector.categories.BUILTIN, so demo data needs no taxonomy file (labels
# and descendant matching work on the built-in set). Planted conversion signal: electronics,
# travel and fashion buy; investing and insurance sign up.
THEMES = (
    Theme("soccer", "sports/soccer", ("533", "483"), "sports"),
    Theme("electronics", "tech/electronics", ("632", "596"), "shop", PURCHASE, 0.30),
    Theme("destinations", "travel/destinations", ("655", "653"), "travel", PURCHASE, 0.30),
    Theme("investing", "money/investing", ("410", "391"), "news", SIGNUP, 0.30),
    Theme("basketball", "sports/basketball", ("547", "483"), "sports"),
    Theme("fashion", "fashion", ("560", "579", "552"), "shop", PURCHASE, 0.20),
    Theme("cars", "autos", ("30", "2", "1"), "news"),
    Theme("fitness", "fitness", ("225", "223"), "sports"),
    Theme("cooking", "food/recipes", ("216", "210"), "travel"),
    Theme("video-games", "gaming/consoles", ("681", "680"), "shop"),
    Theme("movies", "entertainment/movies", ("324", "JLBCU7"), "news"),
    Theme("tennis", "sports/tennis", ("539", "483"), "sports"),
    Theme("insurance", "money/insurance", ("398", "391"), "news", SIGNUP, 0.15),
    Theme("gardening", "home/gardening", ("275", "274"), "shop"),
    Theme("music", "entertainment/music", ("338", "JLBCU7"), "news"),
    Theme("golf", "sports/golf", ("512", "483"), "sports"),
    Theme("beauty", "style/beauty", ("553", "552"), "shop"),
    Theme("ai", "tech/ai", ("597", "596"), "news", SIGNUP, 0.05),
    Theme("business", "business", ("53", "52"), "news"),
    Theme("motorcycles", "autos/motorcycles", ("27", "1"), "news"),
)

# Page names by the kind of site a theme belongs to, so paths read like what they are.
PAGE_KINDS = {
    "sports": ("match-report", "article"), "travel": ("guide", "deal"), "shop": ("product", "review"),
}
DEFAULT_PAGE_KINDS = ("article",)

PLANS = ("free", "pro", "team")
PLAN_WEIGHTS = (0.5, 0.35, 0.15)
CURRENCY = "EUR"


@dataclass(frozen=True)
class Device:
    user_agent: str
    weight: float


# Recent real browsers; shares roughly those of Western web traffic (mobile ahead of desktop).
HUMAN_DEVICES = (
    Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36", 0.18),
    Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", 0.05),
    Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 0.03),
    Device("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
           "Version/18.1 Safari/605.1.15", 0.06),
    Device("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36", 0.06),
    Device("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
           "Version/18.1 Mobile/15E148 Safari/604.1", 0.24),
    Device("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
           "CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1", 0.03),
    Device("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Mobile Safari/537.36", 0.19),
    Device("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
           "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", 0.06),
    Device("Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
           "Version/18.1 Mobile/15E148 Safari/604.1", 0.06),
    Device("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36", 0.04),
)

BOT_DEVICES = (
    Device("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 0.4),
    Device("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 0.2),
    Device("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 0.15),
    Device("python-requests/2.32.3", 0.25),
)

# How a session arrives. Campaign arrivals carry UTM tags on the landing URL.
DIRECT, SEARCH, SOCIAL, CAMPAIGN = 0, 1, 2, 3
ARRIVAL_WEIGHTS = (0.35, 0.35, 0.15, 0.15)

SEARCH_REFERRERS = ("https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/")
SEARCH_WEIGHTS = (0.85, 0.1, 0.05)
SOCIAL_REFERRERS = ("https://www.facebook.com/", "https://t.co/", "https://www.reddit.com/",
                    "https://www.instagram.com/")
SOCIAL_WEIGHTS = (0.4, 0.2, 0.25, 0.15)
EXTERNAL_REFERRERS = SEARCH_REFERRERS + SOCIAL_REFERRERS


@dataclass(frozen=True)
class CampaignTemplate:
    source: str
    medium: str
    name: str  # "{topic}" becomes the interest's name, or "brand" for untargeted campaigns
    content: str
    referrer: str  # what the browser reports as referrer on arrival ("" for e-mail clients)


CAMPAIGN_TEMPLATES = (
    CampaignTemplate("newsletter", "email", "{topic}-weekly", "", ""),
    CampaignTemplate("google", "cpc", "{topic}-search", "text-ad", "https://www.google.com/"),
    CampaignTemplate("facebook", "paid_social", "{topic}-prospecting", "carousel", "https://www.facebook.com/"),
)
BRAND_TOPIC = "brand"


@dataclass(frozen=True)
class ConsentClass:
    """The consent state a browser sends, and the columns the collector stores for it."""

    name: str
    gdpr_applies: int
    purposes: tuple[int, ...]  # TCF purposes consented to
    vendor_consent: int
    can_profile: int
    can_share: int
    gpc: int
    us_privacy: str


OPEN = ConsentClass("open", 0, (), 0, 1, 1, 0, "")
# Accepted storage and measurement but not profiling (Purposes 3 and 4): kept, never in segments.
# can_share stays 1: the collector derives it from GPC and US Privacy only (collector.consent).
GDPR_NO_PROFILE = ConsentClass("gdpr_no_profile", 1, (1, 7, 8, 9, 10), 1, 0, 1, 0, "")
GPC = ConsentClass("gpc", 0, (), 0, 1, 0, 1, "1YYN")
CONSENT_CLASSES = (OPEN, GDPR_NO_PROFILE, GPC)

# Documentation-only address space (RFC 5737, RFC 3849): never routes to a real person.
IPV4_NETS = ("192.0.2", "198.51.100", "203.0.113")
IPV6_SHARE = 0.15

# Share of each hour's traffic (UTC): quiet nights, a lunchtime bump and an evening peak.
HOURLY_TRAFFIC = (
    0.6, 0.4, 0.3, 0.25, 0.25, 0.35, 0.6, 1.0, 1.3, 1.4, 1.4, 1.5,
    1.6, 1.5, 1.4, 1.4, 1.5, 1.6, 1.8, 2.0, 2.0, 1.7, 1.3, 0.9,
)
