"""The Kubeflow pipeline: GPU settings, Trainer manifests checked with the official API
models, and a whole local kfp run. (The DAG, the components and dvc.yaml are generated
from components/steps.py: tests/unit/test_cli.py checks what they pass.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import trainjob
from pipelines.dag import ClusterSettings, compile_pipeline
from pix2pixhd.cli import main
from tests.conftest import TINY_PIPELINE_ARGS

ROOT = Path(__file__).resolve().parents[2]
CPU_IMAGE = "registry.example.com/ml/pix2pixhd-cpu@sha256:" + "a" * 64
GPU_IMAGE = "registry.example.com/ml/pix2pixhd-cuda:0.1.0"
IMAGES = {"image": CPU_IMAGE, "gpu_image": GPU_IMAGE}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    compile_pipeline(
        ROOT / "params.yaml",
        out,
        ClusterSettings(gpus=2, s3_endpoint="http://s3:9000", **IMAGES),
    )
    return list(yaml.safe_load_all(out.read_text()))


def test_gpus_only_on_training_tasks(compiled):
    executors = compiled[0]["deploymentSpec"]["executors"]
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, ex in executors.items():
        container = ex["container"]
        acc = (container.get("resources") or {}).get("accelerator")
        k8s = platform.get(name, {})
        if name in ("exec-train-global", "exec-train-local"):
            assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "2"
            assert container["image"] == GPU_IMAGE
            assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
            assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert k8s["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        else:
            assert acc is None and "tolerations" not in k8s and "nodeSelector" not in k8s
            assert container["image"] == CPU_IMAGE
        # every task: S3 credentials from the secret, the endpoint as plain env
        keys = {e["envVar"] for e in k8s["secretAsEnv"][0]["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
        # lightweight components that import the project, kfp not pip-installed at run time
        assert "pip install" not in " ".join(container["command"])


def test_pipeline_parameters_default_to_params_yaml(compiled):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    inputs = compiled[0]["root"]["inputDefinitions"]["parameters"]
    assert inputs["width"]["defaultValue"] == params["data"]["width"]
    assert inputs["niter_global"]["defaultValue"] == params["train_global"]["niter"]
    assert inputs["min_delta"]["defaultValue"] == params["promote"]["min_delta"]
    assert inputs["dataset_uri"]["defaultValue"] == ""


def test_multi_node_training_tasks_are_cpu_launchers(tmp_path):
    out = tmp_path / "p.yaml"
    compile_pipeline(ROOT / "params.yaml", out, ClusterSettings(num_nodes=2, gpus=8, **IMAGES))
    docs = list(yaml.safe_load_all(out.read_text()))
    for ex in docs[0]["deploymentSpec"]["executors"].values():
        assert (ex["container"].get("resources") or {}).get("accelerator") is None
    dist = json.loads(
        docs[0]["root"]["dag"]["tasks"]["train-global"]["inputs"]["parameters"]["distributed"][
            "runtimeValue"
        ]["constant"]
    )
    assert dist["num_nodes"] == 2 and dist["gpus_per_node"] == 8


def _spec() -> trainjob.JobSpec:
    args = ["train", "--stage", "local", "--data", "s3://b/data", "--out", "s3://b/ckpt"]
    return trainjob.JobSpec(
        name="p2phd-local-1a2b",
        image="registry/pix2pixhd-cuda:1.0",
        args=args,
        num_nodes=2,
        gpus_per_node=8,
        env={"AWS_ENDPOINT_URL": "http://s3:9000"},
        secret_env="pix2pixhd-s3",
    )


def test_trainjob_manifest_2x8_round_trips_through_the_api_models():
    from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob

    manifest = trainjob.render(_spec(), "trainjob")
    model = TrainerV1alpha1TrainJob.from_dict(manifest)  # unknown fields are dropped
    assert model.to_dict() == manifest  # so equality means every field is a CRD field
    trainer = manifest["spec"]["trainer"]
    assert manifest["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    # torchrun on every node: c10d rendezvous at node 0's address (the runtime's variables,
    # expanded by Kubernetes), then the step's own command line
    assert trainer["command"] == ["torchrun"]
    args = trainer["args"]
    assert "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)" in args
    assert {"--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d"} <= set(args)
    at = args.index("-m")
    assert args[at : at + 5] == ["-m", "pix2pixhd", "train", "--stage", "local"]
    secret = [e for e in trainer["env"] if "valueFrom" in e]
    assert {e["name"] for e in secret} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "testing" not in json.dumps(manifest)  # no credential values in the manifest


def test_pytorchjob_manifest_2x8_round_trips_through_the_api_models():
    from kubeflow.training import ApiClient

    manifest = trainjob.render(_spec(), "pytorchjob")
    api = ApiClient()
    obj = api._ApiClient__deserialize(manifest, "KubeflowOrgV1PyTorchJob")
    assert api.sanitize_for_serialization(obj) == manifest
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    assert manifest["spec"]["nprocPerNode"] == "8"
    container = replicas["Master"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["torchrun"]
    assert "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)" in container["args"]
    pod = replicas["Worker"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["volumes"][0]["emptyDir"]["medium"] == "Memory"


def test_job_state_from_conditions():
    running = {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    not_yet = {"status": {"conditions": [{"type": "Failed", "status": "False"}]}}
    assert trainjob.job_state(running) is None and trainjob.job_state(not_yet) is None
    assert trainjob.job_state(done) == "Succeeded" and trainjob.job_state(failed) == "Failed"
    with pytest.raises(ValueError, match="DNS-1123"):
        trainjob.JobSpec(name="Bad_Name", image="i", args=[])


def test_local_kfp_run_of_the_tiny_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the cwd
    root = tmp_path / "root"
    args = ["pipeline", "run", "--local", "--pipeline-root", str(root)]
    for a in (*TINY_PIPELINE_ARGS, f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"):
        args += ["--arg", a]
    assert main(args) == 0
    run = next(root.iterdir())
    metrics = json.loads((run / "evaluate" / "out" / "metrics.json").read_text())
    assert 0.0 <= metrics["generated"]["mean_iou"] <= 1.0
    onnx_file = run / "export" / "out" / "model.onnx"
    assert onnx_file.stat().st_size > 10_000
    registration = json.loads((onnx_file.parent / "registration.json").read_text())
    assert registration["version"] == "1"  # registered by export, the servable model
    html = (run / "evaluate" / "samples").read_text()
    assert html.startswith("<html>") and "data:image/png;base64," in html
    decision = json.loads((run / "promote" / "out" / "decision.json").read_text())
    assert decision["promoted"] is True  # the first model always becomes champion


def test_results_show_in_kubeflow_and_side_effects_are_not_cached(compiled):
    """evaluate outputs flat Metrics, a ClassificationMetrics confusion matrix and an
    HTML sample grid; training tasks output Metrics (final losses); tasks that register,
    promote or log models, and the dataset copy, never come from the cache; promote
    runs after export, on export's output."""
    from pipelines.dag import NO_CACHE

    spec = compiled[0]
    tasks = spec["root"]["dag"]["tasks"]
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    types = {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()}
    assert types["metrics"] == "system.Metrics"
    assert types["confusion"] == "system.ClassificationMetrics"
    assert types["samples"] == "system.HTML"
    for stage in ("train-global", "train-local"):
        out = spec["components"][f"comp-{stage}"]["outputDefinitions"]["artifacts"]
        assert out["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    for name, task in tasks.items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name.replace("-", "_") not in NO_CACHE), name
    assert tasks["promote"]["dependentTasks"] == ["export"]
    exported = tasks["promote"]["inputs"]["artifacts"]["registration"]["taskOutputArtifact"]
    assert exported == {"outputArtifactKey": "out", "producerTask": "export"}
    run_ids = {
        tasks[t]["inputs"]["parameters"]["pipeline_run"]["runtimeValue"]["constant"]
        for t in ("train-global", "train-local", "evaluate", "export")
    }
    assert run_ids == {"{{$.pipeline_job_uuid}}"}  # one MLflow tag for the execution


@pytest.mark.parametrize("optional", [False, True])
def test_compiled_export_task_passes_tracking_optional(optional, compiled, tmp_path, monkeypatch):
    """The export task's code, as compiled into the spec, hands tracking.optional (from
    params.yaml and the overrides) to the step, like the CLI does."""
    from types import SimpleNamespace

    import components.export

    command = compiled[0]["deploymentSpec"]["executors"]["exec-export"]["container"]["command"]
    source = command[-1][command[-1].index("import kfp\n") :]
    namespace: dict = {}
    exec(compile(source, "exec-export", "exec"), namespace)  # the function the pod runs
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        return {"max_abs_diff_vs_torch": 0.0}

    monkeypatch.setattr(components.export, "run", fake_run)
    monkeypatch.delenv("PIX2PIXHD_PIPELINE_RUN", raising=False)
    model = SimpleNamespace(path=str(tmp_path / "onnx"), metadata={})
    namespace["export"](
        params_yaml=(ROOT / "params.yaml").read_text(),
        overrides=[f"tracking.optional={str(optional).lower()}"],
        tracking_uri="",
        pipeline_run="r",
        checkpoint=SimpleNamespace(path=str(tmp_path / "g")),
        evaluation=SimpleNamespace(path=str(tmp_path / "e")),
        out=model,
    )
    assert seen["tracking_optional"] is optional and seen["orchestrator"] == "kfp"


def test_compile_requires_pinned_images(tmp_path, capsys):
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="--image is required"):
        compile_pipeline(ROOT / "params.yaml", tmp_path / "p.yaml", ClusterSettings())
    latest = ClusterSettings(image="reg/pix2pixhd-cpu:latest", gpu_image=GPU_IMAGE)
    with pytest.raises(ConfigError, match="--image reg/pix2pixhd-cpu:latest: pin it"):
        compile_pipeline(ROOT / "params.yaml", tmp_path / "p.yaml", latest)
    untagged = ClusterSettings(image=CPU_IMAGE, gpu_image="reg:5000/pix2pixhd-cuda")
    with pytest.raises(ConfigError, match="--gpu-image reg:5000/pix2pixhd-cuda: pin it"):
        compile_pipeline(ROOT / "params.yaml", tmp_path / "p.yaml", untagged)
    assert main(["pipeline", "compile", "--out", str(tmp_path / "p.yaml")]) == 2
    assert "--image is required" in capsys.readouterr().err


def test_submit_and_arg_errors_are_one_line(capsys):
    # nothing listens on port 9 of loopback: a refused connection, no traceback
    images = ["--image", CPU_IMAGE, "--gpu-image", GPU_IMAGE]
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:9", *images]) == 2
    err = capsys.readouterr().err
    assert "cannot submit to http://127.0.0.1:9" in err and "Traceback" not in err
    assert main(["pipeline", "run", "--local", "--arg", "width"]) == 2
    assert "--arg 'width': expected NAME=VALUE" in capsys.readouterr().err


class FakeCustomObjects:
    """Stands in for the Kubernetes CustomObjectsApi: the job completes on the 3rd poll."""

    def __init__(self, final="Complete"):
        self.created, self.polls, self.final = [], 0, final

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.polls += 1
        done = [{"type": self.final, "status": "True"}] if self.polls >= 3 else []
        return {"status": {"conditions": [{"type": "Created", "status": "True"}, *done]}}


@pytest.mark.parametrize("engine", ["trainjob", "pytorchjob"])
def test_launch_creates_the_job_and_waits_for_it(monkeypatch, engine):
    from kubernetes import client, config

    fake = FakeCustomObjects("Complete" if engine == "trainjob" else "Succeeded")
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: fake)
    assert trainjob.launch(_spec(), engine, poll_s=0)["state"] == "Succeeded"
    group, version, namespace, plural, body = fake.created[0]
    expected = trainjob.TRAINJOB if engine == "trainjob" else trainjob.PYTORCHJOB
    assert (group, version, plural) == expected[:3] and namespace == "kubeflow"
    assert body == trainjob.render(_spec(), engine) and fake.polls == 3
    failing = FakeCustomObjects("Failed")
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: failing)
    with pytest.raises(RuntimeError, match="p2phd-local-1a2b failed"):
        trainjob.launch(_spec(), engine, poll_s=0)


def test_multi_node_task_runs_the_job_on_object_storage_and_copies_its_output(
    s3, tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from components import storage
    from pipelines import executor

    _, bucket = s3

    def artifact(name: str) -> SimpleNamespace:  # a kfp artifact on Kubeflow's MinIO
        (tmp_path / name).mkdir()
        return SimpleNamespace(uri=f"minio://{bucket}/run/{name}", path=str(tmp_path / name))

    data, bounds, report, init, ckpt = (artifact(n) for n in ("d", "b", "r", "g", "c"))
    jobs = []

    def fake_launch(spec, engine):  # the job: rank 0 writes its checkpoint to --out
        jobs.append((spec, engine))
        args = dict(zip(spec.args[1::2], spec.args[2::2], strict=False))
        (tmp_path / "job").mkdir()
        (tmp_path / "job" / "latest.pth").write_bytes(b"weights")
        (tmp_path / "job" / "metrics.json").write_text('{"iterations": 7}')
        storage.upload(tmp_path / "job", args["--out"])
        return {"state": "Succeeded"}

    monkeypatch.setattr(trainjob, "launch", fake_launch)
    metrics = SimpleNamespace(logged={})
    metrics.log_metric = lambda k, v: metrics.logged.__setitem__(k, v)
    dist = json.dumps({"num_nodes": 2, "gpus_per_node": 8, "image": "img", "engine": "trainjob"})
    main_params = {"width": 128, "height": 64, "ngf": 8, "niter_local": 1, "niter_decay_local": 0}
    values = {
        "params_yaml": (ROOT / "params.yaml").read_text(),
        "overrides": [],
        **main_params,
        "tracking_uri": "",
        "pipeline_run": "r",
        "distributed": dist,
        "data": data,
        "boundaries": bounds,
        "data_summary": report,
        "init_checkpoint": init,
        "out": ckpt,
        "metrics": metrics,
    }
    ckpt.metadata = {}
    executor.execute("train_local", values)  # the component body, as the pod runs it
    spec, engine = jobs[0]
    args = dict(zip(spec.args[1::2], spec.args[2::2], strict=False))  # after "train"
    assert engine == "trainjob" and spec.num_nodes == 2 and spec.gpus_per_node == 8
    assert args["--data"] == f"s3://{bucket}/run/d"  # minio:// read as S3
    assert args["--data-summary"] == f"s3://{bucket}/run/r/summary.json"
    assert args["--init"] == f"s3://{bucket}/run/g/latest.pth"
    assert args["--out"] == f"s3://{bucket}/run/c/job"
    assert "data.width=128" in spec.args and "train_local.niter=1" in spec.args
    assert (tmp_path / "c" / "latest.pth").read_bytes() == b"weights"
    assert metrics.logged == {"iterations": 7.0}


def test_dvc_params_keys_exist_in_params_yaml():
    """`dvc repro` refuses a stage whose params key is missing from params.yaml (a key the
    schema defaults, e.g. data.palette, must still be spelled out there)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def present(key: str) -> bool:
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [
        f"{name}: {key}"
        for name, stage in stages.items()
        for entry in stage.get("params", [])
        for key in ([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v])
        if not present(key)
    ]
    assert not missing


def test_training_tasks_retry_and_resume_from_a_volume(tmp_path, monkeypatch):
    """A lost training pod is retried (backoff), and with a checkpoint volume the retry
    resumes from the last checkpoint the earlier attempt left there."""
    from types import SimpleNamespace

    import components.train
    from pipelines import executor

    out = tmp_path / "p.yaml"
    settings = ClusterSettings(checkpoint_pvc="train-ckpt", **IMAGES)
    compile_pipeline(ROOT / "params.yaml", out, settings)
    spec, platform = yaml.safe_load_all(out.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("train-global", "train-local"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        assert tasks[name]["retryPolicy"]["backoffDuration"] == "30s"
        mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][f"exec-{name}"][
            "pvcMount"
        ]
        assert mounts[0]["mountPath"] == "/pix2pixhd-checkpoints"
    assert "retryPolicy" not in tasks["evaluate"]

    seen = []

    def fake_train(**kwargs):  # an attempt that checkpoints, then the one that finishes
        seen.append((kwargs["out"], kwargs.get("resume")))
        (kwargs["out"] / "latest.pth").write_bytes(b"weights")
        return {"iterations": 1}

    monkeypatch.setattr(components.train, "run", fake_train)
    volume = tmp_path / "volume"
    dist = json.dumps({"num_nodes": 1, "gpus_per_node": 1, "checkpoint_dir": str(volume)})
    metrics = SimpleNamespace(log_metric=lambda k, v: None)
    for attempt in ("a", "b"):
        artifact = tmp_path / attempt
        values = {
            "params_yaml": (ROOT / "params.yaml").read_text(),
            "overrides": [],
            "tracking_uri": "",
            "pipeline_run": "run-1",
            "distributed": dist,
            "data": SimpleNamespace(path=str(tmp_path / "d"), uri=""),
            "boundaries": SimpleNamespace(path=str(tmp_path / "b"), uri=""),
            "data_summary": SimpleNamespace(path=str(tmp_path / "r"), uri=""),
            "out": SimpleNamespace(path=str(artifact), uri="", metadata={}),
            "metrics": metrics,
        }
        executor.execute("train_global", values)
        assert (artifact / "latest.pth").read_bytes() == b"weights"  # in the artifact too
    keep = volume / "run-1" / "train_global"
    assert seen == [(keep, False), (keep, True)]  # the second attempt resumes
