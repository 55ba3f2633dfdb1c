import pytest

from fraudstream.settings import Settings, describe


def test_environment_variables_set_typed_values():
    s = Settings.from_env({"BATCH_SIZE": "250", "FLAG_QUANTILE": "0.995", "ALERTS_TOPIC": "a2"})
    assert (s.batch_size, s.flag_quantile, s.alerts_topic) == (250, 0.995, "a2")


def test_keyword_overrides_beat_the_environment():
    s = Settings.from_env({"BATCH_SIZE": "250"}, batch_size=10)
    assert s.batch_size == 10


def test_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="BATCH_SIZE='ten'"):
        Settings.from_env({"BATCH_SIZE": "ten"})


def test_to_env_rebuilds_the_same_settings():
    s = Settings.from_env({}, bootstrap_servers="127.0.0.1:1", refit_every_events=7)
    assert Settings.from_env(s.to_env()) == s


def test_every_setting_is_documented_with_its_variable():
    rows = describe()
    assert all(env.isupper() and doc for env, _default, doc in rows)
    assert len({env for env, _, _ in rows}) == len(rows)
