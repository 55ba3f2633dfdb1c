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


def test_a_choice_outside_its_list_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="PROCESSOR_RUNTIME='flink'.*'confluent' or 'faust'"):
        Settings.from_env({"PROCESSOR_RUNTIME": "flink"})


def test_a_value_out_of_range_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="FLAG_QUANTILE='1.5'.*less than 1"):
        Settings.from_env({"FLAG_QUANTILE": "1.5"})
    with pytest.raises(ValueError, match="BATCH_SIZE=0"):
        Settings.from_env({}).replace(batch_size=0)  # a change is checked too


def test_only_the_given_environment_is_read(monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "7")
    assert Settings.from_env({}).batch_size == 1000
    assert Settings.from_env().batch_size == 7


def test_secrets_are_never_shown_but_reach_the_clients():
    s = Settings.from_env({"KAFKA_SASL_PASSWORD": "s3cret", "PSEUDONYM_KEY": "k" * 20})
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.to_env_all())
    assert s.kafka_config()["sasl.password"] == "s3cret"
    assert Settings.from_env(s.to_env()) == s


def test_bare_settings_are_the_defaults_whatever_the_process_environment(monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "7")
    assert Settings().batch_size == 1000
