"""Synthetic payment transactions with learnable, but not trivially separable, fraud.

The generator builds a small world first (cards with a home country and home IPs, merchants with
a country, a category and Zipf-like popularity, shared Wi-Fi/NAT IPs, commercial VPN exits) and
then draws transactions from it, fully vectorized with numpy so that millions of rows take
seconds.

Legitimate traffic follows a diurnal pattern in the card's local time, mostly comes from the
card's home IPs at domestic merchants, and overlaps fraud the way real traffic does: shared
Wi-Fi and VPN exits (IPs seen with many cards, some used by fraudsters too), trips abroad (some
to countries fraud comes from) with bigger purchases there, big-ticket purchases at resellable
categories, tiny payments (transit, app stores), cards issued during the range (no history), and
holders who move abroad for good (their card's country stays, their IPs and shops change).

Fraud (about 2% of rows) comes in four patterns that share structure across entities, so that
much fraud late in the range is predictable from entity history earlier in the range:

- ``ring``: a few ring IPs, usually abroad, are reused for weeks across many stolen cards,
  with medium-high amounts at resellable categories; some groups pay through one-off
  residential proxies in the card's own country instead;
- ``card_testing``: a stolen card gets a burst of 5-25 tiny amounts (0.50-3.00) within 1-2
  hours at a few merchants (mostly digital goods) from a small pool of tester IPs, followed by
  a few large purchases;
- ``stolen_card``: a card is used with high amounts over 1-3 days after compromise, mostly
  from new IPs in another country, some from domestic proxies or shared VPN exits, while its
  legitimate use goes on;
- ``risky_merchant``: about 3% of merchants (never the most popular ones) carry a clearly
  elevated fraud rate, half of them for the whole range and half only for 10-25 days of it.

Labels are noisy as chargebacks are: ``is_fraud`` is the reported label, ``fraud_pattern``
the truth. About 10% of fraud is never reported (label 0), and about 0.2% of legitimate rows
are disputed by their own cardholder (``friendly_fraud``, label 1), more often at categories
easy to dispute.

``new_pattern_from_day`` adds, from that day of the range on, ``account_takeover``: a
taken-over card pays 3-6 everyday amounts at domestic everyday merchants within minutes, from
its own home IP. The hourly batch features and the request fields barely see it; the card's
minute-scale streaming windows do. Its rows replace legitimate rows after that day, drawn by a
generator of their own, so the same seed gives the same world before the day with or without
it (a drift study compares the two).

Every transaction gets ``label_available_at``: the time its label becomes known (chargeback or
maturity), 2-15 days after the event for fraud and legitimate rows alike. Amounts are drawn on
one nominal scale whatever the currency; ``currency`` is the card's home currency.

Why one module of this length: the world and the fraud patterns are one joint draw from one
seeded generator (patterns reuse the cards, IPs and merchants drawn first), so a seed reproduces
the whole data set; each pattern is a function of its own.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from feature_pipelines.fraud import schema
from feature_repo import clock

logger = logging.getLogger(__name__)

_MS = 1
_SECOND = 1_000 * _MS
_HOUR = 3_600 * _SECOND
_DAY = 24 * _HOUR

_COUNTRIES = np.array(schema.COUNTRIES, dtype=object)
_COUNTRY_INDEX = {c: i for i, c in enumerate(schema.COUNTRIES)}

# Share of cards issued (and of merchants located) in each country.
_COUNTRY_WEIGHTS = {
    "US": 28, "GB": 9, "DE": 7, "FR": 6, "ES": 4, "IT": 4, "NL": 3, "IE": 1, "CA": 5,
    "AU": 4, "JP": 5, "BR": 5, "IN": 6, "MX": 3, "SG": 1, "CH": 1, "SE": 1, "NG": 1,
    "RU": 1, "RO": 1, "UA": 1, "VN": 1, "ID": 1, "CN": 1, "PH": 1,
}  # fmt: skip

# Where fraudsters' IPs (rings, testers, stolen-card sessions) are located.
_FRAUD_ORIGIN_WEIGHTS = {
    "NG": 15, "RU": 15, "RO": 12, "UA": 10, "VN": 10, "ID": 8, "BR": 8, "CN": 7, "PH": 7,
    "IN": 4, "US": 4,
}  # fmt: skip

# Standard-time UTC offsets in hours, for the diurnal pattern in local time.
_UTC_OFFSET_HOURS = {
    "US": -5, "GB": 0, "DE": 1, "FR": 1, "ES": 1, "IT": 1, "NL": 1, "IE": 0, "CA": -5,
    "AU": 10, "JP": 9, "BR": -3, "IN": 5.5, "MX": -6, "SG": 8, "CH": 1, "SE": 1, "NG": 1,
    "RU": 3, "RO": 2, "UA": 2, "VN": 7, "ID": 7, "CN": 8, "PH": 8,
}  # fmt: skip

# Relative transaction volume per local hour of day: quiet nights, lunch and evening peaks.
_DIURNAL = np.array(
    [0.35, 0.22, 0.15, 0.12, 0.12, 0.18, 0.35, 0.60, 0.85, 1.00, 1.05, 1.15,
     1.25, 1.20, 1.10, 1.05, 1.10, 1.20, 1.35, 1.40, 1.30, 1.10, 0.80, 0.55]
)  # fmt: skip

# category -> (lognormal mu, lognormal sigma, share of merchants)
_CATEGORY_PARAMS = {
    "grocery": (3.4, 0.60, 0.18),
    "restaurants": (3.3, 0.55, 0.15),
    "fuel": (3.8, 0.35, 0.07),
    "pharmacy": (3.1, 0.60, 0.06),
    "fashion": (4.2, 0.70, 0.12),
    "electronics": (5.0, 0.90, 0.07),
    "travel": (5.8, 0.80, 0.05),
    "gaming": (3.0, 0.90, 0.05),
    "digital_goods": (2.4, 0.80, 0.08),
    "jewelry": (5.4, 0.90, 0.03),
    "gift_cards": (4.0, 0.60, 0.04),
    "subscriptions": (2.6, 0.50, 0.10),
}
assert tuple(_CATEGORY_PARAMS) == schema.MERCHANT_CATEGORIES
_CATEGORIES = np.array(schema.MERCHANT_CATEGORIES, dtype=object)
_CATEGORY_INDEX = {c: i for i, c in enumerate(schema.MERCHANT_CATEGORIES)}

# Categories fraudsters cash out at (easy to resell), with their relative attraction.
_CASH_OUT_BOOST = {"electronics": 12.0, "gift_cards": 12.0, "jewelry": 8.0, "travel": 4.0,
                   "fashion": 3.0, "gaming": 2.0}  # fmt: skip
_CARD_TESTING_BOOST = {"digital_goods": 40.0, "gaming": 6.0, "subscriptions": 4.0}

# Fraud budget per pattern, as a share of all rows (about 2% in total).
_FRAUD_SHARE = {"ring": 0.0055, "card_testing": 0.0050, "stolen_card": 0.0050,
                "risky_merchant": 0.0030}  # fmt: skip
_PATTERN_CODE = {p: i for i, p in enumerate(schema.FRAUD_PATTERNS)}

_RISKY_MERCHANT_SHARE = 0.03

# Legitimate behaviour that overlaps fraud (shares of cards or of legitimate rows).
_TRAVELER_SHARE = 0.15  # cards with one trip abroad in the range
_TRIP_TO_FRAUD_ORIGIN = 0.4  # trips to a country fraud also comes from
_MOVER_SHARE = 0.03  # cards whose holder moves abroad: new home IP and shops, same issuer
_NEW_CARD_SHARE = 0.12  # cards issued during the range: no history before their first use
_VPN_CARD_SHARE = 0.08
_SHARED_IP_ROW_SHARE = 0.06  # public Wi-Fi / carrier NAT
_BIG_PURCHASE_SHARE = 0.03  # legitimate big-ticket purchases at resellable categories
_MICRO_PAYMENT_SHARE = 0.02  # parking, transit, app-store top-ups: tiny legitimate amounts

# Fraud that hides: share of ring groups and stolen-card episodes paying through a fresh
# residential proxy in the card's own country, and of stolen-card episodes through VPN exits
# legitimate cardholders use too.
_DOMESTIC_PROXY_SHARE = 0.3
_STOLEN_VIA_VPN_SHARE = 0.2
# Risky merchants: this share is risky only for a window of the range (merchants change risk).
_RISKY_WINDOWED_SHARE = 0.5

# Label noise: fraud never reported (the label stays 0) and legitimate purchases charged back
# (friendly fraud), which leans towards categories that are easy to dispute.
_UNREPORTED_FRAUD_SHARE = 0.10
_FRIENDLY_FRAUD_SHARE = 0.002
_FRIENDLY_BOOST = {"digital_goods": 4.0, "gaming": 4.0, "subscriptions": 3.0, "electronics": 2.0,
                   "fashion": 1.5}  # fmt: skip

# The new pattern (``new_pattern_from_day``): its share of all rows from that day on.
_NEW_PATTERN_SHARE = 0.01
_NEW_PATTERN_STREAM = 19  # its own random stream: the rest of the world does not change
_EVERYDAY_CATEGORIES = ("grocery", "restaurants", "pharmacy", "fuel", "fashion")
_V6_SHARE = 0.05
_V4_FIRST_OCTETS = (23, 31, 37, 41, 45, 49, 52, 58, 62, 66, 71, 77, 81, 85, 91, 95, 101, 103,
                    109, 113, 121, 131, 139, 151, 176)  # fmt: skip
assert len(_V4_FIRST_OCTETS) == len(schema.COUNTRIES)
_V6_PREFIX = 0x20010DB8 << 96  # 2001:db8::/32, the documentation prefix


def _probabilities(weights: Mapping[str, float]) -> np.ndarray:
    """Return a probability vector over schema.COUNTRIES from a sparse weight mapping."""
    p = np.array([float(weights.get(c, 0.0)) for c in schema.COUNTRIES])
    return p / p.sum()


_COUNTRY_P = _probabilities(_COUNTRY_WEIGHTS)
_FRAUD_ORIGIN_P = _probabilities(_FRAUD_ORIGIN_WEIGHTS)
_VPN_P = _probabilities({"US": 3, "NL": 3, "SE": 2, "CH": 2, "SG": 2, "GB": 2, "DE": 1, "RO": 1})
_UTC_OFFSET_MS = np.array(
    [round(_UTC_OFFSET_HOURS[c] * _HOUR) for c in schema.COUNTRIES], dtype=np.int64
)


class _IpPool:
    """Allocates unique IPs (country, v4/v6) and renders them as canonical strings at the end."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._countries: list[np.ndarray] = []
        self._v6: list[np.ndarray] = []
        self._size = 0

    def new(self, countries: np.ndarray) -> np.ndarray:
        """Allocate one fresh IP per entry of ``countries``; return their pool indices."""
        countries = np.asarray(countries, dtype=np.int64)
        self._countries.append(countries)
        self._v6.append(self._rng.random(len(countries)) < _V6_SHARE)
        idx = np.arange(self._size, self._size + len(countries), dtype=np.int64)
        self._size += len(countries)
        return idx

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (ip strings as an object array, ip country codes) indexed by pool index."""
        countries = np.concatenate(self._countries) if self._countries else np.zeros(0, np.int64)
        v6 = np.concatenate(self._v6) if self._v6 else np.zeros(0, bool)
        k = np.arange(self._size, dtype=np.uint64)
        # k -> k * odd (mod 2^n) is a bijection, so every index gets a distinct host part.
        if self._size >= 1 << 24:
            raise ValueError("too many IPs for one /8 per country")
        host4 = ((k * np.uint64(0x9E3779B1) + np.uint64(0x5BD1E9)) & np.uint64(0xFFFFFF)).astype(
            np.int64
        )
        host6 = k * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
        subnet6 = self._rng.integers(0, 1 << 16, size=self._size)
        first_octet = np.asarray(_V4_FIRST_OCTETS, dtype=np.int64)[countries]
        out = np.empty(self._size, dtype=object)
        # Loops run over the IP pool (about one IP per ten rows), not over the rows.
        for i in np.flatnonzero(~v6):
            out[i] = str(ipaddress.IPv4Address((int(first_octet[i]) << 24) | int(host4[i])))
        for i in np.flatnonzero(v6):
            value = (
                _V6_PREFIX
                | ((int(countries[i]) + 1) << 88)
                | (int(subnet6[i]) << 64)
                | int(host6[i])
            )
            out[i] = str(ipaddress.IPv6Address(value))
        return out, countries


@dataclass
class _World:
    """The population transactions are drawn from."""

    card_country: np.ndarray  # int country code per card
    card_activity: np.ndarray  # probability of each card making a given legit transaction
    card_home_ips: np.ndarray  # (n_cards, 2) pool indices; both equal for single-IP cards
    merchant_country: np.ndarray
    merchant_category: np.ndarray
    merchant_popularity: np.ndarray  # sums to 1
    merchant_by_country_cdf: np.ndarray  # country code + within-country cdf, sorted merchants
    merchant_by_country_order: np.ndarray  # merchant index for each cdf entry
    risky_merchants: np.ndarray
    shared_ips_by_country: list[np.ndarray]  # public Wi-Fi / carrier NAT IPs per country
    vpn_ips: np.ndarray  # commercial VPN exits: many unrelated cards, mostly abroad
    card_uses_vpn: np.ndarray
    card_issued_ms: np.ndarray  # first possible use; the range start for established cards
    card_moves_ms: np.ndarray  # when the holder moves abroad; past the range end if never
    card_new_country: np.ndarray  # where a moving holder lives afterwards
    card_new_home_ip: np.ndarray  # their home IP there (-1 if they never move)


@dataclass
class _Rows:
    """Integer-coded transaction rows of one pattern, before assembling the frame."""

    t_ms: np.ndarray
    card: np.ndarray
    merchant: np.ndarray
    ip: np.ndarray
    amount: np.ndarray
    pattern: int

    def __len__(self) -> int:
        return len(self.t_ms)


def _build_world(
    rng: np.random.Generator, n_rows: int, ips: _IpPool, start_ms: int, end_ms: int
) -> _World:
    n_cards = max(50, round(n_rows / 12))
    n_merchants = max(60, round(n_rows / 250))
    n_countries = len(schema.COUNTRIES)

    card_country = rng.choice(n_countries, size=n_cards, p=_COUNTRY_P)
    card_activity = rng.gamma(1.5, 1.0, size=n_cards)
    card_activity /= card_activity.sum()
    home0 = ips.new(card_country)
    has_second = rng.random(n_cards) < 0.35
    home1 = home0.copy()
    home1[has_second] = ips.new(card_country[has_second])
    card_home_ips = np.stack([home0, home1], axis=1)

    # Every country gets at least one merchant so domestic shopping is always possible.
    merchant_country = np.concatenate(
        [
            np.arange(n_countries),
            rng.choice(n_countries, size=n_merchants - n_countries, p=_COUNTRY_P),
        ]
    )
    category_p = np.array([v[2] for v in _CATEGORY_PARAMS.values()])
    merchant_category = rng.choice(
        len(_CATEGORIES), size=n_merchants, p=category_p / category_p.sum()
    )
    rank = rng.permutation(n_merchants) + 1
    popularity = 1.0 / rank**1.05
    popularity /= popularity.sum()

    # Sorting merchants by country and offsetting each country's cdf by its code lets one
    # searchsorted pick a merchant within any given country for millions of rows at once.
    order = np.lexsort((np.arange(n_merchants), merchant_country))
    sorted_country = merchant_country[order]
    sorted_pop = popularity[order]
    cum = np.cumsum(sorted_pop)
    country_total = np.bincount(sorted_country, weights=sorted_pop, minlength=n_countries)
    country_start = np.concatenate([[0.0], np.cumsum(country_total)[:-1]])
    cdf = sorted_country + (cum - country_start[sorted_country]) / country_total[sorted_country]

    # Risky merchants come from outside the most popular tenth, so their fraud stands out.
    n_risky = max(2, round(_RISKY_MERCHANT_SHARE * n_merchants))
    candidates = np.flatnonzero(rank > max(1, n_merchants // 10))
    risky = np.sort(rng.choice(candidates, size=n_risky, replace=False))

    n_shared = np.maximum(1, np.round(_COUNTRY_P * n_cards / 150).astype(np.int64))
    shared = [ips.new(np.full(n, c)) for c, n in enumerate(n_shared)]
    vpn_ips = ips.new(rng.choice(n_countries, size=max(3, n_cards // 400), p=_VPN_P))
    card_uses_vpn = rng.random(n_cards) < _VPN_CARD_SHARE

    # New cards are issued during the range (never in its last day); movers keep their issuer
    # (card country) but live, shop and connect abroad from some point on.
    period = end_ms - start_ms
    issued = np.full(n_cards, start_ms, dtype=np.int64)
    new_card = rng.random(n_cards) < _NEW_CARD_SHARE
    issued[new_card] += (rng.random(int(new_card.sum())) * max(period - _DAY, 1)).astype(np.int64)
    moves = np.full(n_cards, end_ms + _DAY, dtype=np.int64)
    mover = rng.random(n_cards) < _MOVER_SHARE
    moves[mover] = start_ms + (rng.random(int(mover.sum())) * period).astype(np.int64)
    new_country = rng.choice(n_countries, size=n_cards, p=_COUNTRY_P)
    new_country = np.where(
        new_country == card_country, (new_country + 1) % n_countries, new_country
    )
    new_home_ip = np.full(n_cards, -1, dtype=np.int64)
    new_home_ip[mover] = ips.new(new_country[mover])

    logger.debug("world: %d cards, %d merchants (%d risky)", n_cards, n_merchants, n_risky)
    return _World(
        card_country=card_country,
        card_activity=card_activity,
        card_home_ips=card_home_ips,
        merchant_country=merchant_country,
        merchant_category=merchant_category,
        merchant_popularity=popularity,
        merchant_by_country_cdf=cdf,
        merchant_by_country_order=order,
        risky_merchants=risky,
        shared_ips_by_country=shared,
        vpn_ips=vpn_ips,
        card_uses_vpn=card_uses_vpn,
        card_issued_ms=issued,
        card_moves_ms=moves,
        card_new_country=new_country,
        card_new_home_ip=new_home_ip,
    )


def _merchants_in_country(
    rng: np.random.Generator, world: _World, country: np.ndarray
) -> np.ndarray:
    """Pick one merchant per row in the given country, by popularity."""
    u = rng.random(len(country))
    pos = np.searchsorted(world.merchant_by_country_cdf, country + u, side="left")
    pos = np.minimum(pos, len(world.merchant_by_country_cdf) - 1)
    return world.merchant_by_country_order[pos]


def _merchant_sampler_p(world: _World, boost: dict[str, float], risky_boost: float) -> np.ndarray:
    """Merchant probabilities: popularity times a category boost (and a boost for risky ones)."""
    factor = np.ones(len(_CATEGORIES))
    for category, value in boost.items():
        factor[_CATEGORY_INDEX[category]] = value
    # Flatten popularity so fraud also reaches the long tail of merchants.
    p = np.sqrt(world.merchant_popularity) * factor[world.merchant_category]
    p[world.risky_merchants] *= risky_boost
    return p / p.sum()


def _category_amounts(
    rng: np.random.Generator, category: np.ndarray, mu_shift: float = 0.0
) -> np.ndarray:
    mu = np.array([v[0] for v in _CATEGORY_PARAMS.values()])[category] + mu_shift
    sigma = np.array([v[1] for v in _CATEGORY_PARAMS.values()])[category]
    return rng.lognormal(mu, sigma)


def _foreign_countries(rng: np.random.Generator, home: np.ndarray) -> np.ndarray:
    """Draw a fraud-origin country per row, never equal to ``home``."""
    country = rng.choice(len(schema.COUNTRIES), size=len(home), p=_FRAUD_ORIGIN_P)
    clash = country == home
    # Re-draw from the remaining origins by renormalizing without the home country.
    for c in np.unique(home[clash]):
        rows = np.flatnonzero(clash & (home == c))
        p = _FRAUD_ORIGIN_P.copy()
        p[c] = 0.0
        country[rows] = rng.choice(len(schema.COUNTRIES), size=len(rows), p=p / p.sum())
    return country


def _episode_sizes(rng: np.random.Generator, budget: int, low: int, high: int) -> np.ndarray:
    """Draw episode sizes in [low, high] until the row budget is spent (at least one episode)."""
    sizes = rng.integers(low, high + 1, size=budget // low + 1)
    keep = int(np.searchsorted(np.cumsum(sizes), budget, side="right"))
    return sizes[: max(1, keep)]


def _offsets_within(rng: np.random.Generator, sizes: np.ndarray, span_ms: np.ndarray) -> np.ndarray:
    """Sorted random offsets in [0, span) for each episode, flattened episode by episode."""
    episode = np.repeat(np.arange(len(sizes)), sizes)
    offsets = (rng.random(len(episode)) * np.repeat(span_ms, sizes)).astype(np.int64)
    return offsets[np.lexsort((offsets, episode))]


def _legit_rows(
    rng: np.random.Generator, world: _World, ips: _IpPool, n: int, start_ms: int, days: int
) -> _Rows:
    n_cards = len(world.card_country)
    card = rng.choice(n_cards, size=n, p=world.card_activity)
    home = world.card_country[card]
    end_ms = start_ms + days * _DAY

    # Local time of day from the diurnal curve, wrapped into the range whole days at a time
    # so that the time of day is preserved.
    period = days * _DAY
    day0 = start_ms - start_ms % _DAY
    hour = rng.choice(24, size=n, p=_DIURNAL / _DIURNAL.sum())
    local_ms = hour * _HOUR + rng.integers(0, _HOUR, size=n)
    raw = day0 + rng.integers(0, days, size=n) * _DAY + local_ms - _UTC_OFFSET_MS[home]
    offset = (raw - start_ms) % period
    t_ms = start_ms + np.where(offset == 0, period, offset)
    # A card issued during the range is used only from then on: its rows before that move
    # forward a whole number of days (same local time), spread over the days left. Cards are
    # issued at least a day before the end, so the first such day is never past it.
    early = t_ms < world.card_issued_ms[card]
    first = t_ms[early] + -(-(world.card_issued_ms[card[early]] - t_ms[early]) // _DAY) * _DAY
    days_left = (end_ms - first) // _DAY
    t_ms[early] = first + (rng.random(len(first)) * (days_left + 1)).astype(np.int64) * _DAY

    # A holder who moved abroad lives there: home IP and domestic shops of the new country.
    relocated = t_ms >= world.card_moves_ms[card]
    living = np.where(relocated, world.card_new_country[card], home)

    # Travellers go abroad once for 2-10 days (some to countries fraud also comes from), mostly
    # paying from a hotel or roaming IP, and buy bigger there.
    traveler = rng.random(n_cards) < _TRAVELER_SHARE
    trip_start = start_ms + (rng.random(n_cards) * period).astype(np.int64)
    trip_end = trip_start + rng.integers(2 * _DAY, 10 * _DAY, size=n_cards)
    trip_country = np.where(
        rng.random(n_cards) < _TRIP_TO_FRAUD_ORIGIN,
        rng.choice(len(schema.COUNTRIES), size=n_cards, p=_FRAUD_ORIGIN_P),
        rng.choice(len(schema.COUNTRIES), size=n_cards, p=_COUNTRY_P),
    )
    trip_country = np.where(
        trip_country == world.card_country, (trip_country + 1) % len(_COUNTRIES), trip_country
    )
    trip_ip = np.full(n_cards, -1, dtype=np.int64)
    trip_ip[traveler] = ips.new(trip_country[traveler])
    on_trip = traveler[card] & (t_ms >= trip_start[card]) & (t_ms < trip_end[card])
    on_trip &= rng.random(n) < 0.85
    shop_country = np.where(on_trip, trip_country[card], living)

    # Mostly domestic merchants; some cross-border online shopping.
    merchant = _merchants_in_country(rng, world, shop_country)
    cross_border = rng.random(n) < 0.12
    merchant[cross_border] = rng.choice(
        len(world.merchant_country), size=int(cross_border.sum()), p=world.merchant_popularity
    )
    # Big-ticket purchases (a laptop, jewellery, a flight) at the categories fraud cashes out at,
    # more often on a trip.
    big = rng.random(n) < np.where(on_trip, 4 * _BIG_PURCHASE_SHARE, _BIG_PURCHASE_SHARE)
    merchant[big] = rng.choice(
        len(world.merchant_country),
        size=int(big.sum()),
        p=_merchant_sampler_p(world, _CASH_OUT_BOOST, 1.0),
    )

    second = rng.random(n) < 0.3
    ip = world.card_home_ips[card, second.astype(np.int64)]
    shared = (rng.random(n) < _SHARED_IP_ROW_SHARE) & ~on_trip
    for c in np.unique(living[shared]):
        rows = np.flatnonzero(shared & (living == c))
        pool = world.shared_ips_by_country[c]
        ip[rows] = pool[rng.integers(0, len(pool), size=len(rows))]
    at_new_home = relocated & ~shared
    ip[at_new_home] = world.card_new_home_ip[card[at_new_home]]
    ip[on_trip] = trip_ip[card[on_trip]]
    # VPN users pay through a random exit half of the time: legit IPs shared by many cards.
    vpn = world.card_uses_vpn[card] & (rng.random(n) < 0.5) & ~on_trip
    ip[vpn] = world.vpn_ips[rng.integers(0, len(world.vpn_ips), size=int(vpn.sum()))]

    amount = _category_amounts(rng, world.merchant_category[merchant])
    amount[big] = _category_amounts(rng, world.merchant_category[merchant[big]], mu_shift=0.5)
    micro = (rng.random(n) < _MICRO_PAYMENT_SHARE) & ~big
    amount[micro] = rng.uniform(0.5, 4.0, size=int(micro.sum()))
    return _Rows(t_ms, card, merchant, ip, amount, _PATTERN_CODE[schema.FRAUD_PATTERN_NONE])


def _ring_rows(
    rng: np.random.Generator, world: _World, ips: _IpPool, budget: int, start_ms: int, end_ms: int
) -> _Rows:
    period = end_ms - start_ms
    # "A few" rings: 2 for 50k rows, 7 for a million, never more than 12.
    n_rings = int(np.clip(round(np.sqrt(budget) / 11), 2, 12))
    ring_country = rng.choice(len(_COUNTRIES), size=n_rings, p=_FRAUD_ORIGIN_P)
    ips_per_ring = rng.integers(1, 5, size=n_rings)
    ring_ips = ips.new(np.repeat(ring_country, ips_per_ring))
    ring_ip_start = np.concatenate([[0], np.cumsum(ips_per_ring)[:-1]])
    # Rings start in the first half of the range and stay active until its end.
    ring_start = start_ms + (rng.random(n_rings) * 0.45 * period).astype(np.int64)
    ring_weight = rng.uniform(0.5, 1.5, size=n_rings)

    # One group = one stolen card used 1-4 times by one ring within 36 hours.
    sizes = _episode_sizes(rng, budget, 1, 4)
    n_groups = len(sizes)
    ring = rng.choice(n_rings, size=n_groups, p=ring_weight / ring_weight.sum())
    latest = np.maximum(ring_start[ring], end_ms - 36 * _HOUR)
    group_start = ring_start[ring] + (rng.random(n_groups) * (latest - ring_start[ring])).astype(
        np.int64
    )
    group_ip = ring_ips[ring_ip_start[ring] + rng.integers(0, ips_per_ring[ring])]
    card = rng.choice(
        len(world.card_country), size=n_groups, replace=n_groups > len(world.card_country)
    )

    # Some groups pay through a fresh residential proxy in the card's own country instead.
    proxied = rng.random(n_groups) < _DOMESTIC_PROXY_SHARE
    group_ip[proxied] = ips.new(world.card_country[card[proxied]])

    offsets = _offsets_within(rng, sizes, np.full(n_groups, 36 * _HOUR))
    t_ms = np.repeat(group_start, sizes) + offsets
    n = len(t_ms)
    merchant = rng.choice(
        len(world.merchant_country), size=n, p=_merchant_sampler_p(world, _CASH_OUT_BOOST, 4.0)
    )
    amount = rng.lognormal(5.0, 0.55, size=n)
    return _Rows(
        t_ms,
        np.repeat(card, sizes),
        merchant,
        np.repeat(group_ip, sizes),
        amount,
        _PATTERN_CODE["ring"],
    )


def _card_testing_rows(
    rng: np.random.Generator, world: _World, ips: _IpPool, budget: int, start_ms: int, end_ms: int
) -> _Rows:
    period = end_ms - start_ms
    # An episode is 5-25 tiny probes followed by 1-3 large cash-out purchases.
    max_ep = budget // 6 + 1
    n_small = rng.integers(5, 26, size=max_ep)
    n_large = rng.integers(1, 4, size=max_ep)
    n_ep = max(1, int(np.searchsorted(np.cumsum(n_small + n_large), budget, side="right")))
    n_small, n_large = n_small[:n_ep], n_large[:n_ep]

    # A small pool of tester IPs is reused across episodes (shared structure to learn).
    n_testers = max(2, n_ep // 5)
    testers = ips.new(rng.choice(len(_COUNTRIES), size=n_testers, p=_FRAUD_ORIGIN_P))
    ep_ip = testers[rng.integers(0, n_testers, size=n_ep)]
    card = rng.choice(len(world.card_country), size=n_ep, replace=n_ep > len(world.card_country))
    t0 = start_ms + (rng.random(n_ep) * max(period - 10 * _HOUR, _HOUR)).astype(np.int64)
    burst_span = rng.integers(_HOUR, 2 * _HOUR + 1, size=n_ep)

    # Probes: 1-3 candidate merchants per episode, mostly digital goods.
    probe_p = _merchant_sampler_p(world, _CARD_TESTING_BOOST, 1.0)
    candidates = rng.choice(len(world.merchant_country), size=(n_ep, 3), p=probe_p)
    n_cand = rng.integers(1, 4, size=n_ep)
    small_ep = np.repeat(np.arange(n_ep), n_small)
    small_t = np.repeat(t0, n_small) + _offsets_within(rng, n_small, burst_span)
    small_merchant = candidates[
        small_ep, (rng.random(len(small_ep)) * n_cand[small_ep]).astype(np.int64)
    ]
    small_amount = rng.uniform(0.5, 3.0, size=len(small_ep))

    # Cash-out: a few large purchases within 6 hours after the burst.
    large_ep = np.repeat(np.arange(n_ep), n_large)
    large_t = np.repeat(t0 + burst_span, n_large) + _offsets_within(
        rng, n_large, np.full(n_ep, 6 * _HOUR)
    )
    large_merchant = rng.choice(
        len(world.merchant_country),
        size=len(large_ep),
        p=_merchant_sampler_p(world, _CASH_OUT_BOOST, 2.0),
    )
    large_amount = rng.lognormal(5.6, 0.5, size=len(large_ep))

    ep = np.concatenate([small_ep, large_ep])
    return _Rows(
        np.concatenate([small_t, large_t]),
        card[ep],
        np.concatenate([small_merchant, large_merchant]),
        ep_ip[ep],
        np.concatenate([small_amount, large_amount]),
        _PATTERN_CODE["card_testing"],
    )


def _stolen_card_rows(
    rng: np.random.Generator, world: _World, ips: _IpPool, budget: int, start_ms: int, end_ms: int
) -> _Rows:
    period = end_ms - start_ms
    sizes = _episode_sizes(rng, budget, 2, 8)
    n_ep = len(sizes)
    card = rng.choice(len(world.card_country), size=n_ep, replace=n_ep > len(world.card_country))
    home = world.card_country[card]
    span = rng.integers(_DAY, 3 * _DAY + 1, size=n_ep)
    t0 = start_ms + (rng.random(n_ep) * np.maximum(period - span, _HOUR)).astype(np.int64)

    # 1-2 fresh foreign IPs per episode; 30% of episodes go through a shared proxy instead.
    fresh = ips.new(np.repeat(_foreign_countries(rng, home), 2)).reshape(n_ep, 2)
    n_proxies = max(3, n_ep // 6)
    proxy_country = rng.choice(len(_COUNTRIES), size=n_proxies, p=_FRAUD_ORIGIN_P)
    proxies = ips.new(proxy_country)
    pick = rng.integers(0, n_proxies, size=n_ep)
    use_proxy = (rng.random(n_ep) < 0.3) & (proxy_country[pick] != home)
    fresh[use_proxy, 0] = proxies[pick[use_proxy]]
    fresh[use_proxy, 1] = proxies[pick[use_proxy]]
    # Others hide: a fresh residential proxy in the card's own country, or the commercial VPN
    # exits legitimate cardholders use too.
    domestic = (rng.random(n_ep) < _DOMESTIC_PROXY_SHARE) & ~use_proxy
    fresh[domestic] = ips.new(np.repeat(home[domestic], 2)).reshape(-1, 2)
    via_vpn = (rng.random(n_ep) < _STOLEN_VIA_VPN_SHARE) & ~use_proxy & ~domestic
    fresh[via_vpn] = world.vpn_ips[
        rng.integers(0, len(world.vpn_ips), size=(int(via_vpn.sum()), 2))
    ]
    n_ips = rng.integers(1, 3, size=n_ep)

    ep = np.repeat(np.arange(n_ep), sizes)
    t_ms = np.repeat(t0, sizes) + _offsets_within(rng, sizes, span)
    which = (rng.random(len(ep)) * n_ips[ep]).astype(np.int64)
    merchant = rng.choice(
        len(world.merchant_country),
        size=len(ep),
        p=_merchant_sampler_p(world, _CASH_OUT_BOOST, 3.0),
    )
    amount = rng.lognormal(5.5, 0.6, size=len(ep))
    return _Rows(t_ms, card[ep], merchant, fresh[ep, which], amount, _PATTERN_CODE["stolen_card"])


def _risky_merchant_rows(
    rng: np.random.Generator, world: _World, ips: _IpPool, budget: int, start_ms: int, end_ms: int
) -> _Rows:
    n = max(1, budget)
    # Some risky merchants are risky for the whole range, the others only for 10-25 days of it
    # (a breach, a fraudulent operator): their history does not always tell.
    n_risky = len(world.risky_merchants)
    period = end_ms - start_ms - 1
    span = np.where(
        rng.random(n_risky) < _RISKY_WINDOWED_SHARE,
        np.minimum(rng.integers(10 * _DAY, 25 * _DAY + 1, size=n_risky), period),
        period,
    )
    window_start = start_ms + 1 + (rng.random(n_risky) * (period - span)).astype(np.int64)
    which = rng.integers(0, n_risky, size=n)
    merchant = world.risky_merchants[which]
    card = rng.choice(len(world.card_country), size=n, p=world.card_activity)
    t_ms = window_start[which] + (rng.random(n) * span[which]).astype(np.int64)
    # Half of it is first-party-looking (the card's own home IP), half from abroad.
    ip = world.card_home_ips[card, 0].copy()
    foreign = rng.random(n) < 0.55
    ip[foreign] = ips.new(_foreign_countries(rng, world.card_country[card[foreign]]))
    amount = _category_amounts(rng, world.merchant_category[merchant], mu_shift=0.6)
    return _Rows(t_ms, card, merchant, ip, amount, _PATTERN_CODE["risky_merchant"])


def _account_takeover_rows(
    rng: np.random.Generator, world: _World, budget: int, from_ms: int, end_ms: int
) -> _Rows:
    """The new pattern: a taken-over card (its wallet or its holder's device) pays 3-6
    everyday-sized amounts at domestic everyday merchants within about ten minutes, from the
    card's own home IP. Nothing in the hourly batch features or the request stands out: only
    minute-scale windows of the card (streaming features) see the burst."""
    sizes = _episode_sizes(rng, budget, 3, 6)
    n_ep = len(sizes)
    card = rng.choice(len(world.card_country), size=n_ep, replace=n_ep > len(world.card_country))
    span = rng.integers(3 * 60 * _SECOND, 12 * 60 * _SECOND + 1, size=n_ep)
    t0 = from_ms + (rng.random(n_ep) * np.maximum(end_ms - from_ms - span, 1)).astype(np.int64)
    t0 = np.maximum(t0, world.card_issued_ms[card])
    ep = np.repeat(np.arange(n_ep), sizes)
    t_ms = np.repeat(t0, sizes) + _offsets_within(rng, sizes, span)
    relocated = t_ms >= world.card_moves_ms[card[ep]]
    country = np.where(relocated, world.card_new_country[card[ep]], world.card_country[card[ep]])
    ip = np.where(relocated, world.card_new_home_ip[card[ep]], world.card_home_ips[card[ep], 0])
    # Everyday merchants of the country the card is used in, by popularity.
    merchant = _merchants_in_country(rng, world, country)
    everyday = np.isin(
        world.merchant_category[merchant], [_CATEGORY_INDEX[c] for c in _EVERYDAY_CATEGORIES]
    )
    retry = ~everyday
    merchant[retry] = _merchants_in_country(rng, world, country[retry])
    amount = rng.lognormal(3.3, 0.45, size=len(ep))
    return _Rows(t_ms, card[ep], merchant, ip, amount, _PATTERN_CODE[schema.FRAUD_PATTERN_NEW])


def _add_new_pattern(
    rng: np.random.Generator,
    world: _World,
    from_ms: int,
    end_ms: int,
    budget: int,
    columns: tuple[np.ndarray, ...],
) -> None:
    """Put ``account_takeover`` rows in the place of legitimate rows after ``from_ms``.

    A generator of its own draws them and the rows they replace, and ``columns`` (time, card,
    merchant, ip, amount, pattern, label delay, reported label) change in place only there:
    the same seed gives the same world, identical before ``from_ms``, with or without it.
    """
    t_ms, card, merchant, ip, amount, pattern, delay, reported = columns
    rows = _account_takeover_rows(rng, world, max(3, budget), from_ms, end_ms)
    n = len(rows)
    free = np.flatnonzero((pattern == _PATTERN_CODE[schema.FRAUD_PATTERN_NONE]) & (t_ms > from_ms))
    if n > len(free):
        raise ValueError("too few rows after new_pattern_from_day to hold the new pattern")
    at = rng.choice(free, size=n, replace=False)
    t_ms[at] = np.clip(rows.t_ms, from_ms + 1, end_ms)
    card[at], merchant[at], ip[at] = rows.card, rows.merchant, rows.ip
    amount[at] = np.maximum(np.round(rows.amount, 2), 0.01)
    pattern[at] = rows.pattern
    delay[at] = _label_delays(rng, n)
    reported[at] = rng.random(n) >= _UNREPORTED_FRAUD_SHARE


def _label_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """Maturity delay in ms: 2-15 days, skewed towards the first week."""
    delay = 2 * _DAY + (rng.beta(1.5, 4.0, size=n) * 13 * _DAY).astype(np.int64)
    return np.clip(delay, 2 * _DAY, 15 * _DAY)


def _reported_labels(
    rng: np.random.Generator, pattern: np.ndarray, category: np.ndarray
) -> np.ndarray:
    """The label a chargeback process reports; turns some legit rows into ``friendly_fraud``.

    Some fraud of every pattern is never reported (its label stays 0), and some legitimate
    purchases are disputed by their own cardholder (label 1, pattern ``friendly_fraud``), more
    often at categories easy to dispute. ``pattern`` is changed in place.
    """
    none = _PATTERN_CODE[schema.FRAUD_PATTERN_NONE]
    fraud = pattern != none
    reported = fraud & (rng.random(len(pattern)) >= _UNREPORTED_FRAUD_SHARE)
    factor = np.ones(len(_CATEGORIES))
    for name, value in _FRIENDLY_BOOST.items():
        factor[_CATEGORY_INDEX[name]] = value
    weight = factor[category]
    legit = ~fraud
    p = _FRIENDLY_FRAUD_SHARE * weight / weight[legit].mean() if legit.any() else weight * 0
    friendly = legit & (rng.random(len(pattern)) < p)
    pattern[friendly] = _PATTERN_CODE[schema.FRAUD_PATTERN_FRIENDLY]
    return reported | friendly


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """Vectorized ``f"{prefix}{n:0{width}d}"`` for non-negative ints, as an object array of str."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if len(numbers) and numbers.max() >= 10**width:
        raise ValueError(f"ids do not fit in {width} digits")
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (numbers[:, None] // powers) % 10 + ord("0")
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    chars = np.concatenate(
        [np.broadcast_to(head, (len(numbers), len(head))), digits.astype(np.uint8)], axis=1
    )
    fixed = np.ascontiguousarray(chars).view(f"S{len(head) + width}").ravel()
    return fixed.astype(f"U{len(head) + width}").astype(object)


def _to_utc(end: datetime | None) -> datetime:
    """Resolve ``end``: now floored to the minute by default, naive means UTC, ms precision."""
    if end is None:
        return clock.now().replace(second=0, microsecond=0)
    end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
    return end.replace(microsecond=end.microsecond // 1000 * 1000)


def write_transactions(frame: pd.DataFrame, path: Path) -> None:
    """Write a transactions frame to parquet, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Microseconds, like the feature tables: DuckDB (Feast's offline store) cannot cast
    # nanosecond tz-aware timestamps. Lossless, event times have millisecond precision.
    frame.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=False)


def generate_transactions(
    n_rows: int,
    seed: int = 7,
    days: int = 35,
    end: datetime | None = None,
    new_pattern_from_day: int | None = None,
) -> pd.DataFrame:
    """Generate ``n_rows`` synthetic transactions with timestamps in ``(end - days, end]``.

    ``end`` defaults to now (UTC) floored to the minute; a naive ``end`` is taken as UTC. The
    same arguments always give an identical frame. Fraud is about 2% of rows from a few
    thousand rows up; tiny frames still get every pattern, so their fraud rate is higher.
    Columns and dtypes follow ``schema.TRANSACTION_COLUMNS`` / ``schema.TRANSACTION_DTYPES``;
    rows are sorted by ``event_timestamp`` and ``transaction_id`` follows that order.
    ``new_pattern_from_day`` (0 to ``days - 1``, counted from the range's start) adds the
    ``account_takeover`` pattern from that day on; rows before it do not change.
    """
    if n_rows < 1:
        raise ValueError("n_rows must be positive")
    if days < 1:
        raise ValueError("days must be at least 1")
    if new_pattern_from_day is not None and not 0 <= new_pattern_from_day < days:
        raise ValueError(
            f"new_pattern_from_day={new_pattern_from_day} must be a day of the range, "
            f"0 to {days - 1} (days from its start)"
        )
    end_utc = _to_utc(end)
    end_ms = (end_utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    start_ms = end_ms - days * _DAY

    rng = np.random.default_rng(seed)
    ips = _IpPool(rng)
    world = _build_world(rng, n_rows, ips, start_ms, end_ms)

    fraud_builders = {
        "ring": _ring_rows,
        "card_testing": _card_testing_rows,
        "stolen_card": _stolen_card_rows,
        "risky_merchant": _risky_merchant_rows,
    }
    fraud_parts = [
        build(rng, world, ips, max(1, round(_FRAUD_SHARE[name] * n_rows)), start_ms, end_ms)
        for name, build in fraud_builders.items()
    ]
    n_fraud = sum(len(p) for p in fraud_parts)
    if n_fraud >= n_rows:
        raise ValueError(f"n_rows={n_rows} is too small to hold every fraud pattern")
    legit = _legit_rows(rng, world, ips, n_rows - n_fraud, start_ms, days)
    parts = [legit, *fraud_parts]

    ip_strings, ip_country = ips.finish()
    t_ms = np.concatenate([p.t_ms for p in parts])
    # Episodes drawn near the range edges are clipped into (start, end].
    t_ms = np.clip(t_ms, start_ms + 1, end_ms)
    card = np.concatenate([p.card for p in parts])
    merchant = np.concatenate([p.merchant for p in parts])
    ip = np.concatenate([p.ip for p in parts])
    amount = np.maximum(np.round(np.concatenate([p.amount for p in parts]), 2), 0.01)
    pattern = np.concatenate([np.full(len(p), p.pattern, dtype=np.int8) for p in parts])
    delay = _label_delays(rng, len(t_ms))

    reported = _reported_labels(rng, pattern, world.merchant_category[merchant])
    if new_pattern_from_day is not None:
        _add_new_pattern(
            np.random.default_rng([seed, _NEW_PATTERN_STREAM]),
            world,
            start_ms + new_pattern_from_day * _DAY,
            end_ms,
            round(_NEW_PATTERN_SHARE * n_rows * (days - new_pattern_from_day) / days),
            (t_ms, card, merchant, ip, amount, pattern, delay, reported),
        )

    order = np.argsort(t_ms, kind="stable")
    t_ms, card, merchant, ip = t_ms[order], card[order], merchant[order], ip[order]
    amount, pattern, delay = amount[order], pattern[order], delay[order]
    reported = reported[order]

    card_country = world.card_country[card]
    # Ids are rendered once per entity; rows share the string objects.
    card_ids = _format_ids("card_", np.arange(len(world.card_country)), 7)
    merchant_ids = _format_ids("m_", np.arange(len(world.merchant_country)), 5)
    currency_by_country = np.array(
        [schema.COUNTRY_CURRENCY[c] for c in schema.COUNTRIES], dtype=object
    )
    event_ns = t_ms * 1_000_000
    frame = pd.DataFrame(
        {
            schema.TRANSACTION_ID: _format_ids("tx_", np.arange(n_rows), 9),
            schema.EVENT_TIMESTAMP: pd.to_datetime(event_ns, unit="ns", utc=True),
            schema.AMOUNT: amount.astype(np.float64),
            schema.CURRENCY: currency_by_country[card_country],
            schema.IP_ADDRESS: ip_strings[ip],
            schema.CARD_ID: card_ids[card],
            schema.MERCHANT_ID: merchant_ids[merchant],
            schema.CARD_COUNTRY: _COUNTRIES[card_country],
            schema.IP_COUNTRY: _COUNTRIES[ip_country[ip]],
            schema.MERCHANT_COUNTRY: _COUNTRIES[world.merchant_country[merchant]],
            schema.MERCHANT_CATEGORY: _CATEGORIES[world.merchant_category[merchant]],
            schema.IS_FRAUD: reported.astype(np.int8),
            schema.FRAUD_PATTERN: np.array(schema.FRAUD_PATTERNS, dtype=object)[pattern],
            schema.LABEL_AVAILABLE_AT: pd.to_datetime(
                event_ns + delay * 1_000_000, unit="ns", utc=True
            ),
        }
    )
    logger.info(
        "generated %d transactions (%.2f%% labelled fraud) from %s to %s",
        n_rows,
        100.0 * reported.mean(),
        end_utc - timedelta(days=days),
        end_utc,
    )
    return frame
