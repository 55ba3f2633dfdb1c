"""A seeded generator of realistic bank card transactions with labelled fraud scenarios.

Accounts have their own spending level, activity and home city; merchants have a category with a
typical amount and a popularity; times follow a daily and weekly rhythm; amounts are log-normal
with a Pareto tail. Fraud (``is_fraud`` = 1, ``fraud_scenario`` names it), about 0.5-1 % of rows:

- ``compromised_merchant``: every transaction at a few merchants during a few days;
- ``account_takeover``: a burst of high amounts from a city new to the account, within hours;
- ``card_testing``: several tiny amounts at online merchants, then a large one, within minutes;
- ``high_amount``: a rare single very high amount.

The same seed and arguments always give the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CITIES = (
    # name, weight (share of accounts living there)
    ("London", 9), ("Paris", 8), ("Berlin", 7), ("Madrid", 6), ("Rome", 5), ("Amsterdam", 4),
    ("Vienna", 3), ("Warsaw", 4), ("Prague", 3), ("Lisbon", 3), ("Dublin", 3), ("Brussels", 3),
    ("Munich", 4), ("Milan", 4), ("Barcelona", 4), ("Stockholm", 3), ("Copenhagen", 2),
    ("Oslo", 2), ("Helsinki", 2), ("Zurich", 2), ("Athens", 2), ("Budapest", 2), ("Lyon", 2),
    ("Hamburg", 3), ("Manchester", 3), ("Edinburgh", 2), ("Krakow", 2), ("Porto", 2),
    ("Seville", 1), ("Valencia", 2),
)  # fmt: skip

CATEGORIES = (
    # name, typical amount, log-sd, share of merchants, online
    ("grocery", 42.0, 0.55, 0.18, False),
    ("coffee", 4.8, 0.35, 0.08, False),
    ("restaurant", 38.0, 0.55, 0.14, False),
    ("fuel", 58.0, 0.30, 0.07, False),
    ("pharmacy", 22.0, 0.50, 0.06, False),
    ("clothing", 75.0, 0.60, 0.08, False),
    ("electronics", 240.0, 0.75, 0.05, False),
    ("online_retail", 55.0, 0.80, 0.12, True),
    ("digital_goods", 14.0, 0.70, 0.05, True),
    ("travel", 380.0, 0.70, 0.04, True),
    ("utilities", 85.0, 0.30, 0.04, True),
    ("entertainment", 28.0, 0.50, 0.09, False),
)

BRANDS = (
    "Acme", "Northwind", "Bluebird", "Crown", "Meridian", "Harbor", "Summit", "Oakwood", "Atlas",
    "Beacon", "Cedar", "Delta", "Evergreen", "Falcon", "Granite", "Horizon", "Iris", "Juniper",
    "Keystone", "Lumen", "Maple", "Nova", "Orchid", "Pioneer", "Quarry", "Riverside", "Sterling",
    "Tidewater", "Union", "Vista", "Willow", "Zenith",
)  # fmt: skip

CATEGORY_WORDS = {
    "grocery": "Market", "coffee": "Coffee", "restaurant": "Kitchen", "fuel": "Fuel",
    "pharmacy": "Pharmacy", "clothing": "Apparel", "electronics": "Electronics",
    "online_retail": "Online Store", "digital_goods": "Digital", "travel": "Travel",
    "utilities": "Energy", "entertainment": "Cinema",
}  # fmt: skip

HOUR_WEIGHTS = np.array(
    [0.4, 0.25, 0.15, 0.1, 0.1, 0.2, 0.6, 1.4, 2.2, 2.6, 2.8, 3.2,
     4.0, 3.8, 3.0, 2.8, 3.0, 3.6, 4.2, 4.0, 3.2, 2.4, 1.6, 0.9]
)  # fmt: skip
WEEKDAY_WEIGHTS = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.3, 0.85])  # Monday first

COLUMNS = (
    "transaction_id", "account_id", "amount", "merchant", "timestamp", "location",
    "merchant_category", "is_fraud", "fraud_scenario",
)  # fmt: skip


@dataclass(frozen=True)
class GeneratorConfig:
    rows: int = 60_000
    days: int = 90
    start: str = "2026-01-01"
    seed: int = 7
    accounts: int | None = None  # default: one per 40 rows
    merchants: int | None = None  # default: scales with accounts
    takeover_share: float = 0.0025  # share of rows in account-takeover bursts
    card_testing_share: float = 0.002  # share of rows in card-testing episodes
    high_amount_share: float = 0.0008  # share of rows that are single very high amounts
    compromised_merchants: int = 4
    compromised_days: int = 5
    fraud_scale: float = 1.0  # multiplies the three injected-fraud shares (evaluation sets)
    # Scenarios of other kinds, each with its parameters drawn per set from the seed (an
    # evaluation no setting was tuned on):
    above_amount_share: float = 0.0  # every sale above a fixed amount is fraud: about this share
    multiplied_accounts: float = 0.0  # share of accounts whose amounts are multiplied for weeks
    locations: bool = True  # False: no place in any row (many card feeds carry none)
    integer_ids: bool = False  # account and transaction ids as plain integers


def generate(config: GeneratorConfig = GeneratorConfig()) -> pd.DataFrame:
    """The transactions, sorted by time, with ``is_fraud`` and ``fraud_scenario``."""
    rng = np.random.default_rng(config.seed)
    n_acc = config.accounts or max(50, config.rows // 40)
    n_mer = config.merchants or int(np.clip(n_acc // 4, 60, 5000))
    start = np.datetime64(config.start, "s")
    span_s = config.days * 86400

    # Cities and accounts.
    city_names = np.array([c[0] for c in CITIES])
    city_w = np.array([c[1] for c in CITIES], float)
    home = rng.choice(len(CITIES), n_acc, p=city_w / city_w.sum())
    level = rng.lognormal(0.0, 0.55, n_acc)  # multiplies a merchant's typical amount
    activity = rng.gamma(2.0, 1.0, n_acc)

    # Merchants: a category, a home city (online ones: none), and a Zipf-like popularity.
    cat_share = np.array([c[3] for c in CATEGORIES])
    m_cat = rng.choice(len(CATEGORIES), n_mer, p=cat_share / cat_share.sum())
    m_city = rng.choice(len(CITIES), n_mer, p=city_w / city_w.sum())
    m_online = np.array([CATEGORIES[c][4] for c in m_cat])
    popularity = 1.0 / np.arange(1, n_mer + 1) ** 0.7
    rng.shuffle(popularity)
    names = _merchant_names(rng, m_cat)
    cat_typical = np.array([c[1] for c in CATEGORIES])
    cat_sigma = np.array([c[2] for c in CATEGORIES])

    # Each account shops mostly at its favourite merchants: local shops of its city or online.
    n_fav = 12
    favourites = np.empty((n_acc, n_fav), dtype=np.int64)
    for city in range(len(CITIES)):
        accs = np.flatnonzero(home == city)
        if accs.size == 0:
            continue
        pool = np.flatnonzero((m_city == city) | m_online)
        w = popularity[pool] / popularity[pool].sum()
        favourites[accs] = rng.choice(pool, (accs.size, n_fav), p=w)

    # Injected fraud rows are counted first so the file has exactly `rows` rows.
    scale = config.fraud_scale
    n_ato = max(1, round(config.rows * config.takeover_share * scale / 4.5))  # 4.5 rows a burst
    n_ct = max(1, round(config.rows * config.card_testing_share * scale / 5.5))  # 5.5 an episode
    n_high = max(1, round(config.rows * config.high_amount_share * scale))
    ato_sizes = rng.integers(3, 7, n_ato)
    ct_sizes = rng.integers(3, 7, n_ct) + 1  # tiny ones + the large one
    n_fraud = int(ato_sizes.sum() + ct_sizes.sum() + n_high)
    n_norm = config.rows - n_fraud
    if n_norm <= 0:
        raise ValueError(f"rows={config.rows} is too small for the fraud scenarios")

    # Legitimate transactions.
    acc = rng.choice(n_acc, n_norm, p=activity / activity.sum())
    day_w = np.array([WEEKDAY_WEIGHTS[(_weekday(start) + d) % 7] for d in range(config.days)])
    day = rng.choice(config.days, n_norm, p=day_w / day_w.sum())
    hour = rng.choice(24, n_norm, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    t = day * 86400 + hour * 3600 + rng.integers(0, 3600, n_norm)
    use_fav = rng.random(n_norm) < 0.85
    mer = np.where(
        use_fav,
        favourites[acc, rng.integers(0, n_fav, n_norm)],
        rng.choice(n_mer, n_norm, p=popularity / popularity.sum()),
    )
    amount = cat_typical[m_cat[mer]] * level[acc] * rng.lognormal(0, cat_sigma[m_cat[mer]])
    tail = rng.random(n_norm) < 0.01
    amount[tail] *= 1 + rng.pareto(2.5, tail.sum()) * 2
    travelling = rng.random(n_norm) < 0.03
    loc = np.where(
        m_online[mer], home[acc], np.where(m_city[mer] != home[acc], m_city[mer], home[acc])
    )
    loc = np.where(travelling & ~m_online[mer], rng.integers(0, len(CITIES), n_norm), loc)
    scenario = np.full(n_norm, "", dtype=object)

    # Compromised merchants: busy, in-person merchants; all their sales in a few days are fraud.
    busiest = np.argsort(-np.bincount(mer, minlength=n_mer))
    in_person = busiest[~m_online[busiest]][: max(config.compromised_merchants * 4, 10)]
    for m in rng.choice(in_person, config.compromised_merchants, replace=False):
        d0 = rng.integers(5, max(6, config.days - config.compromised_days))
        hit = (mer == m) & (t >= d0 * 86400) & (t < (d0 + config.compromised_days) * 86400)
        scenario[hit] = "compromised_merchant"

    _multiplied_amounts(rng, config, acc, t, amount, scenario)
    _above_amount(rng, config, amount, scenario)
    parts = [(acc, t, mer, amount, loc, scenario)]
    online = np.flatnonzero(np.isin(m_cat, [_cat("online_retail"), _cat("digital_goods")]))
    pricey = np.flatnonzero(np.isin(m_cat, [_cat("electronics"), _cat("travel")]) | m_online)

    parts += _injected_fraud(
        rng, span_s, level, home, ato_sizes, ct_sizes, n_high, online, pricey, cat_typical[m_cat]
    )

    return _frame(config, start, parts, names, m_cat, city_names)


def _injected_fraud(
    rng, span_s, level, home, ato_sizes, ct_sizes, n_high, online, pricey, merchant_typical
) -> list[tuple]:
    """The injected scenarios' rows (account, time, merchant, amount, city, scenario), one part
    each: account takeover, card testing, rare very high amounts."""
    n_acc, n_ato, n_ct = len(level), len(ato_sizes), len(ct_sizes)
    parts = []
    # Account takeover: a burst of high amounts from a new city.
    a = rng.choice(n_acc, n_ato, replace=False) if n_ato <= n_acc else rng.choice(n_acc, n_ato)
    rows = []
    for i, size in enumerate(ato_sizes):
        t0 = rng.integers(86400 * 3, span_s - 7200)
        city = (home[a[i]] + rng.integers(1, len(CITIES))) % len(CITIES)
        ts = t0 + np.sort(rng.integers(0, rng.integers(1800, 7200), size))
        ms = rng.choice(pricey, size)
        amts = level[a[i]] * rng.uniform(400, 2500, size)
        rows.append((np.full(size, a[i]), ts, ms, amts, np.full(size, city)))
    parts.append(_stack(rows, "account_takeover"))

    # Card testing: tiny amounts at online merchants within minutes, then a large one.
    a = rng.choice(n_acc, n_ct)
    rows = []
    for i, size in enumerate(ct_sizes):
        t0 = rng.integers(86400, span_s - 3600)
        ts = t0 + np.sort(rng.integers(0, 600, size - 1))
        ts = np.append(ts, ts[-1] + rng.integers(60, 900))
        ms = rng.choice(online, size)
        amts = np.append(rng.uniform(0.5, 2.99, size - 1), rng.uniform(300, 2500))
        rows.append((np.full(size, a[i]), ts, ms, amts, np.full(size, home[a[i]])))
    parts.append(_stack(rows, "card_testing"))

    # Rare very high amounts.
    a = rng.choice(n_acc, n_high)
    ts = rng.integers(86400, span_s, n_high)
    ms = rng.choice(pricey, n_high)
    amts = np.maximum(5000.0, level[a] * merchant_typical[ms] * rng.uniform(25, 80, n_high))
    parts.append((a, ts, ms, amts, home[a], np.full(n_high, "high_amount", dtype=object)))
    return parts


def _frame(config: GeneratorConfig, start, parts, names, m_cat, city_names) -> pd.DataFrame:
    """All parts as one frame in time order, with the file's ids and columns."""
    acc, t, mer, amount, loc, scenario = (np.concatenate(cols) for cols in zip(*parts, strict=True))
    order = np.argsort(t, kind="stable")
    acc, t, mer, amount, loc, scenario = (x[order] for x in (acc, t, mer, amount, loc, scenario))
    timestamps = (start + t.astype("timedelta64[s]")).astype(str)
    width = max(8, len(str(config.rows)))
    if config.integer_ids:
        transaction_ids, account_ids = np.arange(1, len(t) + 1), acc + 1
    else:
        transaction_ids = [f"T{i:0{width}d}" for i in range(1, len(t) + 1)]
        account_ids = [f"AC{i:06d}" for i in acc]
    return pd.DataFrame(
        {
            "transaction_id": transaction_ids,
            "account_id": account_ids,
            "amount": np.round(np.maximum(amount, 0.5), 2),
            "merchant": names[mer],
            "timestamp": timestamps,
            "location": city_names[loc] if config.locations else "",
            "merchant_category": np.array([c[0] for c in CATEGORIES])[m_cat[mer]],
            "is_fraud": (scenario != "").astype(int),
            "fraud_scenario": scenario,
        },
        columns=list(COLUMNS),
    )


def _multiplied_amounts(rng, config, acc, t, amount, scenario) -> None:
    """Accounts whose card details leaked: for some weeks, part of their transactions carry a
    multiplied amount (fraud, ``multiplied_amounts``). The multiplier, the weeks and the part
    are drawn per set."""
    n = round(config.multiplied_accounts * rng.uniform(0.5, 1.5) * (acc.max() + 1))
    if n == 0:
        return
    factor, hit_share = rng.uniform(3, 6), rng.uniform(0.2, 0.5)
    span_days = config.days
    for a in rng.choice(acc.max() + 1, n, replace=False):
        weeks = rng.integers(1, 4)
        d0 = rng.integers(3, max(4, span_days - 7 * weeks))
        rows = np.flatnonzero(
            (acc == a) & (t >= d0 * 86400) & (t < (d0 + 7 * weeks) * 86400) & (scenario == "")
        )
        hit = rows[rng.random(rows.size) < hit_share]
        amount[hit] *= factor
        scenario[hit] = "multiplied_amounts"


def _above_amount(rng, config, amount, scenario) -> None:
    """Every legitimate sale above a fixed amount becomes fraud (``above_amount``): the amount
    is drawn per set so that about ``above_amount_share`` of the sales lie above it."""
    if config.above_amount_share <= 0:
        return
    share = config.above_amount_share * rng.uniform(0.5, 1.5)
    legit = scenario == ""
    limit = round(float(np.quantile(amount[legit], 1 - share)), -1)  # a round amount
    scenario[legit & (amount > limit)] = "above_amount"


def write_csv(path: Path | str, config: GeneratorConfig = GeneratorConfig()) -> pd.DataFrame:
    frame = generate(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def _cat(name: str) -> int:
    return [c[0] for c in CATEGORIES].index(name)


def _weekday(day: np.datetime64) -> int:
    return int((day.astype("datetime64[D]").astype(np.int64) + 3) % 7)  # 1970-01-01: Thursday


def _merchant_names(rng: np.random.Generator, m_cat: np.ndarray) -> np.ndarray:
    names, seen = [], set()
    for i, c in enumerate(m_cat):
        base = f"{BRANDS[rng.integers(len(BRANDS))]} {CATEGORY_WORDS[CATEGORIES[c][0]]}"
        name = base if base not in seen else f"{base} #{i}"
        seen.add(name)
        names.append(name)
    return np.array(names, dtype=object)


def _stack(rows: list[tuple], scenario: str) -> tuple:
    cols = [np.concatenate(c) for c in zip(*rows, strict=True)]
    return (*cols, np.full(len(cols[0]), scenario, dtype=object))
