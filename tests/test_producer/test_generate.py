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
