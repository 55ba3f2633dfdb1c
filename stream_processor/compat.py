"""Every private part of another library this project uses, each behind one named function.

Why each is needed:

- scikit-learn: the processor scores with its own flat copy of the fitted trees (no scikit-learn
  in the processor, all trees of a batch walked at once). Copying an Isolation Forest needs the
  depth scikit-learn scores each node with and its normaliser; copying a gradient-boosted
  classifier needs its trees' node arrays and the baseline log-odds. None of them is public.
- river: ``river.drift.ADWIN`` imports river's datasets and with them scikit-learn, SciPy and
  pandas (about 110 MB in the processor); its compiled detector alone imports none of that.
- faust / aiokafka: faust-streaming builds its consumer with a 1.5 s fetch wait and has no
  setting for it; at a low event rate every batch waited that long.

Each function checks, on first use, that the library is the version these were read from
(:data:`READ_FROM`, major.minor) and refuses another with a message saying what to check;
``tests/test_stream_processor/test_compat.py`` compares each against the library's public
behaviour, so an upgrade that moves one fails there.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from types import MappingProxyType

import numpy as np

READ_FROM = MappingProxyType(  # major.minor of each library whose private parts this module reads
    {"scikit-learn": "1.9", "river": "0.26", "faust-streaming": "0.15", "aiokafka": "0.14"}
)


class UnsupportedVersion(RuntimeError):
    pass


@cache
def require(package: str, found: str | None = None) -> None:
    """Refuse a version of ``package`` other than the one this module was written against."""
    found = found or version(package)
    wanted = READ_FROM[package]
    if found.split(".")[:2] != wanted.split("."):
        raise UnsupportedVersion(
            f"{package} {found} is installed; stream_processor/compat.py reads private parts of "
            f"{package} {wanted}.x. Install the pinned version (requirements.lock), or check "
            "each function of compat.py against the new version (tests/test_stream_processor/"
            "test_compat.py) and update READ_FROM."
        )


def forest_node_depths(forest) -> list[np.ndarray]:
    """Per tree of a fitted ``IsolationForest``, the depth scikit-learn scores each node with
    (its path length + the average path length of the samples left in it - 1)."""
    require("scikit-learn")
    pairs = zip(forest._decision_path_lengths, forest._average_path_length_per_tree, strict=True)
    return [lengths + averages - 1.0 for lengths, averages in pairs]


def forest_normaliser(forest) -> float:
    """The average path length of ``max_samples`` samples, times the number of trees: a
    forest's mean depth divided by it is the exponent of scikit-learn's score."""
    require("scikit-learn")
    from sklearn.ensemble._iforest import _average_path_length

    return len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])


def boosted_tree_nodes(estimator) -> list[np.ndarray]:
    """The node array of each tree of a fitted binary ``HistGradientBoostingClassifier``."""
    require("scikit-learn")
    return [predictor.nodes for (predictor,) in estimator._predictors]


def boosted_baseline(estimator) -> float:
    """The classifier's baseline log-odds (the raw prediction before any tree)."""
    require("scikit-learn")
    return float(np.asarray(estimator._baseline_prediction).ravel()[0])


def adwin(delta: float):
    """river's ADWIN as ``river.drift.ADWIN`` builds it with its defaults (``update(x)``
    returns True on a change), without importing ``river.drift``."""
    require("river")
    from river._river_rust.drift import AdaptiveWindowing

    return AdaptiveWindowing(
        delta=delta, clock=32, max_buckets=5, min_window_length=5, grace_period=10
    )


def set_faust_fetch_wait(ms: int) -> None:
    """Make the aiokafka consumer faust builds wait at most ``ms`` for data (faust: 1.5 s).

    The value is set on the consumer after faust builds it and before it starts (aiokafka
    hands it to its fetcher then)."""
    require("faust-streaming")
    require("aiokafka")
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    # Called again (a second app in one process), it replaces its own wrapper, not wraps it.
    original = getattr(thread._create_worker_consumer, "unwrapped", thread._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create_worker_consumer.unwrapped = original  # type: ignore[attr-defined]
    thread._create_worker_consumer = create_worker_consumer
