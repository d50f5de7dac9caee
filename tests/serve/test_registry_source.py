"""`serve --model models:/...` downloads only the graph, and its cache is keyed by the
store: version 1 of store B is not store A's version 1 (issue 22, class 2)."""

from __future__ import annotations

import mlflow
import onnx

from components.serve.source import registered_onnx
from model.onnx_integrity import stamp


def _store_with_version_1(root, graph, checkpoint):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("e", artifact_location=str(root / "artifacts"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp) as run:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=mlflow.pyfunc.PythonModel(),
                artifacts={"onnx": str(graph), "checkpoint": str(checkpoint)},
                pip_requirements=["onnxruntime"],
            )
        client.create_registered_model("tiny")  # the store resolves the logged model
        client.create_model_version(
            "tiny", info.model_uri, run_id=run.info.run_id, model_id=info.model_id
        )
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


def test_the_cache_knows_the_store_and_only_the_graph_is_fetched(serve_model, tmp_path):
    a_graph = tmp_path / "a" / "model.onnx"  # named as export names it
    a_graph.parent.mkdir()
    a_graph.write_bytes(serve_model["onnx"].read_bytes())
    proto = onnx.load(str(a_graph))
    for p in proto.metadata_props:
        if p.key == "version":
            p.value = "another export"
    b_graph = tmp_path / "b" / "model.onnx"
    b_graph.parent.mkdir()
    onnx.save(stamp(proto), str(b_graph))
    a = _store_with_version_1(tmp_path / "a", a_graph, serve_model["checkpoint"])
    b = _store_with_version_1(tmp_path / "b", b_graph, serve_model["checkpoint"])
    cache = tmp_path / "cache"
    got_a = registered_onnx("tiny", None, "1", a, cache).onnx
    got_b = registered_onnx("tiny", None, "1", b, cache).onnx
    assert got_a != got_b
    assert got_a.read_bytes() == a_graph.read_bytes()
    assert got_b.read_bytes() == b_graph.read_bytes()
    assert not list(cache.rglob("*.pth"))  # the checkpoint beside it was not downloaded
