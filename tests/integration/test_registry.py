"""Promotion gate against a real MLflow SQLite store: first model, both directions of
the gate, and two racing promotions."""

import threading

import pytest

from components.registry import ALIAS, RegistryError, promote, register_generator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(root / "artifacts"))
    return uri, client, exp


def _version(store, name, miou):
    uri, client, exp = store
    run = client.create_run(exp)
    return register_generator(
        name,
        run.info.run_id,
        "generator",
        {"mean_iou": miou, "pixel_accuracy": 0.5},
        {"dataset_hash": "abc", "git_sha": "def"},
        uri,
    )


def _champion(store, name):
    return str(store[1].get_model_version_by_alias(name, ALIAS).version)


def test_first_model_is_promoted_then_gate_both_ways(store):
    uri, client, _ = store
    v1 = _version(store, "gate", 0.40)
    assert promote("gate", v1, tracking_uri=uri)["reason"].startswith("first model: promoted")
    assert _champion(store, "gate") == v1
    v2 = _version(store, "gate", 0.41)
    result = promote("gate", v2, min_delta=0.02, tracking_uri=uri)  # 0.41 < 0.40 + 0.02
    assert not result["promoted"] and _champion(store, "gate") == v1
    reason = client.get_model_version("gate", v2).tags["promotion_reason"]
    assert "0.4100 vs champion v1 0.4000" in reason and "<= champion + min_delta 0.02" in reason
    v3 = _version(store, "gate", 0.45)
    assert promote("gate", None, min_delta=0.02, tracking_uri=uri)["promoted"]  # newest: v3
    assert _champion(store, "gate") == v3
    tags = client.get_model_version("gate", v3).tags
    assert tags["dataset_hash"] == "abc" and float(tags["mean_iou"]) == 0.45
    tie = _version(store, "gate", 0.45)  # a tie does not move the alias
    result = promote("gate", tie, tracking_uri=uri)
    assert not result["promoted"] and _champion(store, "gate") == v3
    again = promote("gate", v3, tracking_uri=uri)  # rerun on the champion: nothing moves
    assert again["reason"] == "already the champion" and _champion(store, "gate") == v3


def test_racing_promotions_end_on_the_better_model(store):
    uri, _, _ = store
    v1 = _version(store, "race", 0.30)
    promote("race", v1, tracking_uri=uri)
    better, worse = _version(store, "race", 0.50), _version(store, "race", 0.35)

    # Worst interleaving: the worse candidate passed the gate against v1 and writes the
    # alias last, after the better one has finished its own promotion.
    def late_worse_write():
        late_worse_write.calls += 1
        if late_worse_write.calls == 1:
            promote("race", better, tracking_uri=uri)

    late_worse_write.calls = 0
    promote("race", worse, tracking_uri=uri, _before_alias_write=late_worse_write)
    assert _champion(store, "race") == better

    # and real threads
    v4, v5 = _version(store, "race", 0.60), _version(store, "race", 0.55)
    threads = [
        threading.Thread(target=promote, args=("race", v), kwargs={"tracking_uri": uri})
        for v in (v5, v4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _champion(store, "race") == v4


def test_unknown_version_is_a_clear_error(store):
    uri, _, _ = store
    _version(store, "known", 0.1)
    with pytest.raises(RegistryError, match="has no version 9"):
        promote("known", "9", tracking_uri=uri)
    with pytest.raises(RegistryError, match="no versions"):
        promote("never-registered", None, tracking_uri=uri)
