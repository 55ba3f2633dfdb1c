"""The modules setup.py compiles with Cython: compiled in this install, from the current source,
and the same in what they give as the plain-Python run of that source."""

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fraudstream.schema import Transaction, decode
from stream_processor.features import AccountStates

ROOT = Path(__file__).parents[1]
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def compiled_modules(kind: str = "COMPILED_MODULES") -> tuple[str, ...]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == kind:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py names no {kind}")


@functools.cache
def plain_python(name: str):
    """The module's source run as plain Python, beside the compiled module."""
    source = ROOT / (name.replace(".", "/") + ".py")
    spec = importlib.util.spec_from_file_location(f"plain_{name.replace('.', '_')}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert not module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return module


@pytest.mark.parametrize("name", compiled_modules() + compiled_modules("CYTHON_MODULES"))
def test_the_module_runs_compiled_from_the_current_source(name):
    # A build that failed (no C compiler: the extension is optional) or one older than the
    # source (edited since `make install`) would run other code than the tests read.
    module = importlib.import_module(name)
    built = Path(module.__file__)
    assert built.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), (
        f"{name} runs as plain Python ({built.name}): make install compiles it"
    )
    stem = built.name.split(".")[0]
    for source in built.parent.glob(f"{stem}.p*"):  # .py or .pyx, and .pxd: its types
        if source.suffix in (".py", ".pyx", ".pxd"):
            assert built.stat().st_mtime >= source.stat().st_mtime, (
                f"{built.name} is older than {source.name}: run make install"
            )


def _outcome(decode, value: bytes):
    try:
        txn = decode(value)
    except Exception as exc:  # noqa: BLE001 - the kind and the message are what is compared
        return type(exc).__name__, str(exc)
    return (
        txn.transaction_id, txn.account_id, txn.amount, txn.merchant, txn.timestamp,
        txn.location, txn.is_fraud, txn.extras,
    )  # fmt: skip


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["2026-01-05T12:00:00Z", "2026-01-05 12:00:00", "2026-01-05", "1999-01-01T00:00:00+02:00", " 12.5 ", "", "1", "0"]),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
_VALID = {
    "transaction_id": st.sampled_from(["T1", "tx-2", " T3 "]),
    "account_id": st.sampled_from(["A1", "acct-9"]),
    "amount": st.sampled_from([12.5, 1, "7.25", 1e9, 0, "0.00"]),
    "merchant": st.sampled_from(["Shop", "Café"]),
    "timestamp": st.sampled_from(["2026-01-05T12:00:00Z", "2026-01-05 12:00:00.123", 1767614400]),
    "location": st.sampled_from(["Paris", "48.85,2.35", None, " "]),
}
# Mostly valid records with some fields replaced by anything, and extra fields.
_records = st.fixed_dictionaries(
    {
        k: st.tuples(st.integers(0, 3), valid, _values).map(lambda d: d[2] if d[0] == 0 else d[1])
        for k, valid in _VALID.items()
    },
    optional={"is_fraud": _values, "merchant_category": _values},
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.one_of(_records, st.binary(max_size=40)))
def test_compiled_and_plain_python_decoding_give_the_same_outcome(record):
    from fraudstream import schema

    plain = plain_python("fraudstream.schema")
    if isinstance(record, dict):
        value = json.dumps(record, allow_nan=True).encode()
    else:
        value = record
    compiled, reference = _outcome(schema.decode, value), _outcome(plain.decode, value)
    if compiled != reference:  # a NaN among the extras is unequal to itself: compare the text
        assert repr(compiled) == repr(reference)


def txn(i, account, amount, minutes, merchant, location):
    return Transaction(
        f"T{i}", account, amount, merchant, T0 + timedelta(minutes=minutes), location
    )


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A1", "A2", "A3", "A4"]),
            st.floats(-600, 40 * 24 * 60),  # minutes: late events, equal times, long gaps
            st.sampled_from([0.0, 0.01, 1.0, 4.99, 5.0, 37.5, 800.0, 1e9]),
            st.sampled_from(["Shop", "Grocer", "Fuel"]),
            st.sampled_from(["Paris", "Oslo", "48.85,2.35", "Atlantis", None]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 60),
)
def test_compiled_and_plain_python_features_are_the_same_bit_for_bit(events, batch):
    plain = plain_python("stream_processor.features")
    txns = [
        txn(i, account, amount, minutes, merchant, location)
        for i, (account, minutes, amount, merchant, location) in enumerate(events)
    ]
    # max_accounts=2: accounts are evicted; rebuilt from their events as after a restart
    compiled_states, plain_states = AccountStates(2, history=5), plain.AccountStates(2, history=5)
    for start in range(0, len(txns), batch):
        chunk = txns[start : start + batch]
        for states in (compiled_states, plain_states):
            missing = set(states.missing({t.account_id for t in chunk}))
            states.restore([t for t in txns[:start] if t.account_id in missing])
        a, b = compiled_states.transform(chunk), plain_states.transform(chunk)
        assert a.tobytes() == b.tobytes()  # NaN-safe, and -0.0 differs from 0.0
    assert compiled_states.evicted == plain_states.evicted


def _varied_events() -> list[Transaction]:
    """The shipped events' first thousands, and odd ones: late, at equal times, off the map."""
    frame = pd.read_csv(ROOT / "data" / "transactions.csv", nrows=3000)
    shipped = [decode(json.dumps(record).encode()) for record in frame.to_dict("records")]
    odd = [
        txn(i, "Z", amount, minutes, merchant, place)
        for i, (amount, minutes, merchant, place) in enumerate([
            (1.0, 0, "Shop", "Atlantis"), (2.0, 0, "Shop", "Paris"), (900.0, -30, "New", "Oslo"),
            (3.0, 60 * 24 * 40, "Shop", "48.85,2.35"), (4.0, -60 * 24 * 40, "Fuel", "Paris"),
            (0.0, 60 * 24 * 41, "Shop", None), (5.0, 60 * 24 * 41 + 1, "Shop", "Oslo"),
        ])
    ]  # fmt: skip
    return shipped + odd


def test_each_event_sets_every_declared_feature_exactly_once(monkeypatch):
    # Features are written by name (features.py's docstring). As plain Python, the row that
    # they are written to can count: each declared name once per event, no other name.
    plain = plain_python("stream_processor.features")
    writes: dict[str, int] = {}

    class Counting(plain._PlainRow):
        __slots__ = ()

        def __setattr__(self, name, value):
            writes[name] = writes.get(name, 0) + 1
            super().__setattr__(name, value)

    monkeypatch.setattr(plain, "_PlainRow", Counting)
    events = _varied_events()
    rows = plain.AccountStates(max_accounts=50, history=5).transform(events)
    assert writes == dict.fromkeys(plain.FEATURE_NAMES, len(events))
    assert np.isfinite(rows).all()


def test_a_declared_feature_that_is_never_computed_is_an_error(monkeypatch):
    plain = plain_python("stream_processor.features")

    class Forgetful(plain._PlainRow):
        __slots__ = ()

        def __setattr__(self, name, value):
            if name != "count_1h":
                super().__setattr__(name, value)

    monkeypatch.setattr(plain, "_PlainRow", Forgetful)
    with pytest.raises(AttributeError, match=r"declared in FEATURES, not computed: \['count_1h'\]"):
        plain.AccountStates().transform(_varied_events()[:3])


def test_compiled_and_plain_python_features_agree_on_the_shipped_events():
    plain = plain_python("stream_processor.features")
    frame = pd.read_csv(ROOT / "data" / "transactions.csv")
    txns = [decode(json.dumps(record).encode()) for record in frame.to_dict("records")]
    compiled_states, plain_states = AccountStates(), plain.AccountStates()
    for start in range(0, len(txns), 1000):
        chunk = txns[start : start + 1000]
        assert compiled_states.transform(chunk).tobytes() == plain_states.transform(chunk).tobytes()


@hypothesis_settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.booleans())
def test_the_compiled_tree_walk_gives_the_numpy_walks_totals_bit_for_bit(seed, rows, nans):
    from stream_processor.fitting import fit_model, fit_supervised
    from stream_processor.model import _compiled_totals

    assert _compiled_totals is not None  # treewalk is compiled (see the test above)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 6)) * rng.choice([1e-3, 1.0, 1e4])
    forest = fit_model(x, version=1, reason="test", n_estimators=20, seed=seed % 1000)
    batch = np.ascontiguousarray(rng.normal(size=(rows, 6)), dtype=np.float32)
    batch[0] = x[0]  # a row on the thresholds' side of a training point
    assert forest.trees.totals(batch).tobytes() == forest.trees.walked_totals(batch).tobytes()
    y = (rng.random(400) < 0.2).astype(int)
    y[:2] = [0, 1]
    if nans:  # the boosted trees learn where a missing value goes
        x[rng.random(x.shape) < 0.1] = np.nan
    boosted = fit_supervised(x, y, version=1).trees
    batch = rng.normal(size=(rows, 6))
    batch[rng.random(batch.shape) < 0.2] = np.nan
    for start in (0.0, -1.25):
        assert (
            boosted.totals(batch, start).tobytes() == boosted.walked_totals(batch, start).tobytes()
        )


_numbers = st.one_of(
    st.floats(),  # NaN and infinities included: orjson writes null
    st.floats(-1e3, 1e3),
    st.sampled_from([0.0, -0.0, 1e-7, 5e-7, -4.9999995e-7, 123456789.1234567, 1e300]),
)


@hypothesis_settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_compiled_rows_text_is_the_pythons_character_for_character(data):
    import stream_processor.core as core

    assert core._features_rows is not None and core._utc_text is not None  # rowtext compiled
    width = len(core._FEATURES_KEYS)
    rows = data.draw(st.lists(st.lists(_numbers, min_size=width, max_size=width), max_size=12))
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    times = data.draw(
        st.lists(
            st.datetimes(
                min_value=datetime(2, 1, 1),
                max_value=datetime(9998, 12, 31),
                timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
            ),
            max_size=12,
        )
    )
    compiled = (core.features_json(matrix), [core.db_timestamp(t) for t in times])
    saved = core._features_rows, core._utc_text
    core._features_rows = core._utc_text = None  # the Python code
    try:
        plain = (core.features_json(matrix), [core.db_timestamp(t) for t in times])
    finally:
        core._features_rows, core._utc_text = saved
    assert compiled == plain
    for text, row in zip(compiled[0], rows, strict=True):  # and it is JSON of those numbers
        values = list(json.loads(text).values())
        assert values == [v if np.isfinite(v) else None for v in np.round(row, 6).tolist()]


def test_the_compiled_rows_text_refuses_what_orjson_would_never_write():
    from stream_processor.rowtext import features_rows

    keys = [b'{"a": ', b', "b": ', b"}"]
    assert features_rows(b"[[1.0,2.5],[3.0,-4.0]]", keys) == [
        '{"a": 1.0, "b": 2.5}',
        '{"a": 3.0, "b": -4.0}',
    ]
    assert features_rows(b"[]", keys) == []
    for bad in (b"[[1.0,2.0,3.0]]", b"[[1.0]]", b"[[1.0,2.0"):
        with pytest.raises(ValueError):
            features_rows(bad, keys)


def test_the_threshold_is_the_quantile_of_scikit_learns_own_scores():
    import joblib

    from stream_processor.fitting import fit_model

    x = np.random.default_rng(7).normal(size=(5000, 7))
    model = fit_model(x, version=1, reason="test", flag_quantile=0.99)
    forest = joblib.load(io.BytesIO(model.blob))
    assert model.threshold == float(np.quantile(-forest.score_samples(x), 0.99))


def test_a_processor_running_plain_python_features_says_so_at_start(settings, monkeypatch, caplog):
    import stream_processor.features as features_module
    from stream_processor.pipeline import BatchPipeline

    BatchPipeline(settings).close()
    assert "runs as plain Python" not in caplog.text
    monkeypatch.setattr(features_module, "COMPILED", False)
    BatchPipeline(settings).close()
    assert "the feature code runs as plain Python" in caplog.text


@pytest.mark.parametrize("compiler", ["/bin/false", None])
def test_a_fresh_editable_install_compiles_or_goes_on_uncompiled(tmp_path, compiler):
    # What `make install` runs, on a copy of the repository as a clone has it (nothing built):
    # with a compiler that always fails, and with the machine's own.
    import shutil
    import subprocess
    import venv

    source = tmp_path / "src"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for path in tracked:
        if (ROOT / path).is_file():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, source / path)
    venv.create(tmp_path / "venv", with_pip=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip"]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if compiler:
        env["CC"] = compiler
    done = subprocess.run(
        [*pip, "install", "--no-deps", "-v", "-e", str(source)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    built = {p.name.split(".")[0] for p in source.rglob("*.so")}
    for name in compiled_modules() + compiled_modules("CYTHON_MODULES"):
        if compiler:
            assert f"{name} not compiled" in done.stdout + done.stderr
        else:
            assert name.rpartition(".")[2] in built, f"{name} was not compiled"
    if compiler:
        assert not built
