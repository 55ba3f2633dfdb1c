from producer.generate import COLUMNS, GeneratorConfig, generate


def test_same_seed_gives_the_same_file():
    a = generate(GeneratorConfig(rows=3000, seed=3))
    b = generate(GeneratorConfig(rows=3000, seed=3))
    assert a.equals(b)


def test_rows_schema_and_fraud_mix():
    df = generate(GeneratorConfig(rows=40_000, seed=5))
    assert len(df) == 40_000
    assert tuple(df.columns) == COLUMNS
    assert df["transaction_id"].is_unique
    assert df["timestamp"].is_monotonic_increasing
    assert 0.005 <= df["is_fraud"].mean() <= 0.01
    scenarios = set(df.loc[df["is_fraud"] == 1, "fraud_scenario"])
    assert scenarios == {"compromised_merchant", "account_takeover", "card_testing", "high_amount"}
    assert (df.loc[df["is_fraud"] == 0, "fraud_scenario"] == "").all()


def test_amounts_are_positive_and_heavy_tailed():
    df = generate(GeneratorConfig(rows=20_000, seed=9))
    legit = df.loc[df["is_fraud"] == 0, "amount"]
    assert (df["amount"] > 0).all()
    assert legit.quantile(0.999) > 8 * legit.median()


def test_card_testing_is_tiny_amounts_then_a_large_one_within_minutes():
    df = generate(GeneratorConfig(rows=20_000, seed=9))
    episode = df[df["fraud_scenario"] == "card_testing"].groupby("account_id").head(100)
    for _account, rows in episode.groupby("account_id"):
        amounts = rows["amount"].tolist()
        assert min(amounts) < 3 and max(amounts) >= 300
        break


def test_daily_rhythm_has_quiet_nights():
    df = generate(GeneratorConfig(rows=20_000, seed=9))
    hours = df["timestamp"].str[11:13].astype(int)
    assert (hours.between(2, 4)).mean() < (hours.between(12, 14)).mean() / 5


def test_other_scenarios_have_their_parameters_drawn_per_set():
    config = GeneratorConfig(
        rows=60_000, seed=5, above_amount_share=0.002, multiplied_accounts=0.05
    )
    sets = [generate(GeneratorConfig(**{**config.__dict__, "seed": seed})) for seed in (5, 6)]
    limits = []
    for df in sets:
        above = df[df["fraud_scenario"] == "above_amount"]
        legit = df[df["is_fraud"] == 0]
        # every sale above one amount is fraud, none at or below it is of that kind
        limit = above["amount"].min()
        assert 0.0008 < len(above) / len(df) < 0.004
        assert legit["amount"].max() < limit
        limits.append(limit)
        multiplied = df[df["fraud_scenario"] == "multiplied_amounts"]
        assert len(multiplied) > 20 and multiplied["account_id"].nunique() > 5
    assert limits[0] != limits[1]  # the fixed amount differs from set to set


def test_a_set_without_locations_and_with_integer_ids():
    df = generate(GeneratorConfig(rows=3000, seed=3, locations=False, integer_ids=True))
    assert (df["location"] == "").all()
    assert df["transaction_id"].tolist() == list(range(1, 3001))
    assert df["account_id"].dtype.kind == "i" and df["account_id"].min() >= 1
