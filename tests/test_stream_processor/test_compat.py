"""The private parts of other libraries that stream_processor/compat.py reads, each checked
against the library's public behaviour, so that an upgrade that moves one fails here."""

import asyncio
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

from stream_processor import compat

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"


@pytest.mark.parametrize("package", sorted(compat.READ_FROM))
def test_the_versions_read_from_are_the_pinned_and_installed_ones(package):
    pinned = re.search(rf"^{package}==(\S+)$", LOCK.read_text(), re.MULTILINE)
    assert pinned, f"{package} is not pinned in requirements.lock"
    for found in (pinned.group(1), version(package)):
        assert found.split(".")[:2] == compat.READ_FROM[package].split("."), package
    compat.require(package)


def test_another_version_is_refused_with_what_to_check():
    with pytest.raises(compat.UnsupportedVersion, match=r"scikit-learn 1\.10\.0 is installed.*"
                       r"1\.9\.x.*test_compat\.py"):  # fmt: skip
        compat.require("scikit-learn", "1.10.0")
    compat.require("scikit-learn", "1.9.7")  # another patch release is the same API


def test_forest_depths_and_normaliser_give_scikit_learns_scores():
    rng = np.random.default_rng(1)
    forest = IsolationForest(n_estimators=20, max_samples=100, max_features=0.5, random_state=2)
    forest.fit(rng.normal(size=(2000, 6)))
    x = np.vstack([rng.normal(size=(200, 6)), rng.normal(scale=6, size=(20, 6))])
    total = np.zeros(len(x))
    for tree, depths, columns in zip(
        forest.estimators_, compat.forest_node_depths(forest), forest.estimators_features_,
        strict=True,
    ):  # fmt: skip
        total += depths[tree.apply(x[:, columns])]
    ours = -(2.0 ** (-total / compat.forest_normaliser(forest)))
    assert np.allclose(ours, forest.score_samples(x), rtol=1e-12)


def test_boosted_nodes_and_baseline_give_scikit_learns_decision():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 4))
    y = (x[:, 0] + x[:, 1] ** 2 + rng.normal(size=3000) > 1.5).astype(int)
    estimator = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(x, y)
    batch = rng.normal(size=(100, 4))
    ours = np.full(len(batch), compat.boosted_baseline(estimator))
    for nodes in compat.boosted_tree_nodes(estimator):
        for i, row in enumerate(batch):
            node = 0
            while not nodes["is_leaf"][node]:
                go_left = row[nodes["feature_idx"][node]] <= nodes["num_threshold"][node]
                node = nodes["left"][node] if go_left else nodes["right"][node]
            ours[i] += nodes["value"][node]
    assert np.allclose(ours, estimator.decision_function(batch), rtol=1e-12)


def test_adwin_detects_where_rivers_public_adwin_does():
    from river.drift import ADWIN

    rng = np.random.default_rng(5)
    scores = np.concatenate([rng.normal(0.45, 0.02, 3000), rng.normal(0.55, 0.02, 3000)])
    ours, rivers = compat.adwin(0.002), ADWIN(delta=0.002)
    detected = []
    for i, value in enumerate(scores.tolist()):
        rivers.update(value)
        assert ours.update(value) == rivers.drift_detected, i
        if rivers.drift_detected:
            detected.append(i)
            ours, rivers = compat.adwin(0.002), ADWIN(delta=0.002)  # as the core does on a refit
    assert detected and 3000 <= detected[0] < 3300


def test_the_consumer_faust_builds_gets_the_fetch_wait_and_hands_it_to_its_fetcher(
    kafka_bootstrap,
):
    import faust
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as Thread

    installed = Thread._create_worker_consumer  # another test's app may have wrapped it
    faust_own = getattr(installed, "unwrapped", installed)
    compat.set_faust_fetch_wait(7)
    compat.set_faust_fetch_wait(7)  # a second app in one process: not wrapped twice
    assert Thread._create_worker_consumer.unwrapped is faust_own

    async def build():
        app = faust.App("compat-test", broker=f"kafka://{kafka_bootstrap}")
        thread = app.consumer._thread
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.start()
        try:
            return consumer._fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    try:
        assert asyncio.run(build()) == 7
    finally:
        Thread._create_worker_consumer = installed
