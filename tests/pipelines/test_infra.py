"""Static checks of infra/: what the Dockerfiles copy exists and pins the same torch as
setup.cfg; the kustomize resources exist, parse, and reference only declared secrets."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml

from components.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfiles_copy_existing_paths_and_pin_setup_cfg_torch():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pins = dict(
        re.match(r"\s*([\w-]+)==([\w.]+)", line).groups()
        for line in cfg["options"]["install_requires"].splitlines()
        if "==" in line
    )
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "infra" / "docker" / name).read_text()
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
            for path in src.split():
                assert (ROOT / path).exists(), f"{name}: COPY {path} does not exist"
                # the allow-list of the build context lets it through
                assert f"!{path.rstrip('/')}" in ignored, f"{name}: {path} not in the context"
        assert f"torch=={pins['torch']}" in text and f"torchvision=={pins['torchvision']}" in text
        # kfp in the image (components skip installing it), and `pix2pixhd serve`'s extras
        assert "requirements.py /src/setup.cfg mlops serve" in text


def test_the_two_dockerfiles_differ_only_in_torch_index_and_metadata():
    # what lets an offline build share every layer between them (see infra/README.md)
    def body(name: str) -> list[str]:
        lines = (ROOT / "infra" / "docker" / name).read_text().splitlines()
        code = [line for line in lines if line and not line.startswith("#")]
        return code[: next(i for i, line in enumerate(code) if line.startswith("ARG GIT_SHA"))]

    cpu, cuda = body("Dockerfile.cpu"), body("Dockerfile.cuda")
    diff = [(a, b) for a, b in zip(cpu, cuda, strict=True) if a != b]
    assert diff == [
        (
            "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
            "ARG TORCH_INDEX_URL=https://pypi.org/simple",
        )
    ]
    assert cpu.index(diff[0][0]) < cpu.index(next(x for x in cpu if x.startswith("FROM")))


def test_image_requirements_are_setup_cfg_pins():
    import subprocess
    import sys

    script = str(ROOT / "infra/docker/requirements.py")
    out = subprocess.run(
        [sys.executable, script, str(ROOT / "setup.cfg"), "mlops", "serve"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    wanted = [x.strip() for e in ("mlops", "serve") for x in extras[e].splitlines() if x.strip()]
    assert out[:2] == ["torch==2.14.1", "torchvision==0.29.1"] and out[-len(wanted) :] == wanted
    assert not any(x.startswith(("pytest", "ruff", "moto")) for x in out)  # no dev extras


def test_docker_runner_user_env_and_pipeline_root(tmp_path):
    from pipelines import containers

    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "MLFLOW_TRACKING_URI": "x", "HOME": "/r"}
    assert containers.forwarded_env(env) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "MLFLOW_TRACKING_URI": "x",
    }
    root = tmp_path / "a" / "root"
    assert containers.container_user(root, uid=1234, gid=99) == "1234:99"
    assert root.is_dir()  # made here, not left to the engine (which would make it root's)


def test_kustomize_resources_exist_and_parse():
    base = ROOT / "infra" / "k8s" / "base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    secrets = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in yaml.safe_load_all((ROOT / "infra/k8s/secrets.example.yaml").read_text())
    }
    kinds = set()
    for res in kust["resources"]:
        for doc in yaml.safe_load_all((base / res).read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"]
            kinds.add((doc["kind"], doc["metadata"]["name"]))
            for ref in re.findall(
                r"secretKeyRef: \{name: ([\w-]+), key: (\w+)\}", (base / res).read_text()
            ):
                assert ref[1] in secrets[ref[0]], f"{res}: {ref} not in the secret template"
    assert {("Deployment", "mlflow"), ("StatefulSet", "postgres"), ("Deployment", "minio")} <= kinds
    overlay = yaml.safe_load(
        (ROOT / "infra/k8s/overlays/gpu-cluster/kustomization.yaml").read_text()
    )
    assert (ROOT / "infra/k8s/overlays/gpu-cluster" / overlay["resources"][0]).resolve() == base


def test_paper_scale_params_file_is_valid_and_paper_sized():
    p = load_params(ROOT / "params.cityscapes.yaml")
    assert (p.data.width, p.data.height) == (2048, 1024)
    assert p.model.generator.n_blocks_global == 9 and p.model.discriminator.ndf == 64
    assert (p.train_global.niter, p.train_local.niter_fix_global) == (100, 10)


def test_cluster_mlflow_uses_the_backend_the_tests_run():
    """The cluster's MLflow server speaks to PostgreSQL through the driver and version
    that the tracking-server tests use (tests/servers.py)."""
    from tests.servers import BACKEND_SCHEME

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    dev = dict(
        re.match(r"\s*([\w\[\]-]+)==([\w.]+)", line).groups()
        for line in cfg["options.extras_require"]["dev"].splitlines()
        if "==" in line
    )
    docker = (ROOT / "infra/docker/Dockerfile.mlflow").read_text()
    assert f"psycopg2-binary=={dev['psycopg2-binary']}" in docker
    manifest = (ROOT / "infra/k8s/base/mlflow.yaml").read_text()
    assert f'--backend-store-uri "{BACKEND_SCHEME}://' in manifest


def _round_trip(doc: dict, model: str) -> None:
    """``doc`` holds only fields of the official Kubernetes API model ``model`` (the
    client's models are generated from the API's OpenAPI schema; required fields are
    checked on the way in, unknown ones dropped, so a typo shows as a difference)."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    obj = api._ApiClient__deserialize(doc, model)
    assert api.sanitize_for_serialization(obj) == doc, f"{doc['kind']}: not a valid {model}"


def _serving_docs() -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "infra/k8s/serving/serve.yaml").read_text()))


def test_serve_manifests_are_kubernetes_objects():
    models = {
        "Deployment": "V1Deployment",
        "Service": "V1Service",
        "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
        "PodDisruptionBudget": "V1PodDisruptionBudget",
    }
    docs = _serving_docs()
    assert sorted(d["kind"] for d in docs) == sorted(models)
    for doc in docs:
        _round_trip(doc, models[doc["kind"]])


def test_serve_deployment_runs_the_cli_with_probes_grace_and_token():
    from components.registry import ALIAS
    from pix2pixhd.cli import build_parser

    serving = ROOT / "infra" / "k8s" / "serving"
    docs = _serving_docs()
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "pix2pixhd-cpu"  # the image that installs the serve extra
    assert (
        "serve"
        in re.search(
            r"requirements\.py /src/setup\.cfg ([\w ]+)",
            (ROOT / "infra/docker/Dockerfile.cpu").read_text(),
        )
        .group(1)
        .split()
    )
    args = build_parser().parse_args(container["args"][1:])  # the real CLI accepts them
    assert container["args"][0] == "pix2pixhd" and args.command == "serve"
    name = load_params(ROOT / "params.yaml").evaluate.model_name
    assert args.model == f"models:/{name}@{ALIAS}" and args.follow_alias
    assert args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == args.port
    # probes on the server's endpoints (tests/serve/test_serve_ops.py checks them)
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] in ("/livez", "/readyz")
    # stopping: preStop's sleep, then the server's grace period, within the pod's
    (sleep,) = [int(x) for x in container["lifecycle"]["preStop"]["exec"]["command"][1:]]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert args.grace_s > 0 and sleep + args.grace_s < grace <= sleep + args.grace_s + 15
    # memory requested and limited above the peak bench/serve_load.py measured with the
    # paper's generator at 1024x512 (docs/data/serve_1024.json), CPU for the HPA
    import json

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    measured = json.loads((ROOT / "docs/data/serve_1024.json").read_text())
    peak_mb = max(r["peak_mb"] for r in measured["service"]["levels"])

    def gib(q: str) -> float:
        assert q.endswith("Gi"), q
        return float(q[:-2]) * 1024

    assert peak_mb < gib(resources["requests"]["memory"]) <= gib(resources["limits"]["memory"])
    # the token: a Secret's key mounted read-only as the file --token-file names
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (token_volume,) = [v for v in volumes.values() if "secret" in v]
    mount = mounts[token_volume["name"]]
    assert mount.get("readOnly") is True
    (item,) = token_volume["secret"]["items"]
    assert str(args.token_file) == f"{mount['mountPath']}/{item['path']}"
    assert (
        token_volume["secret"]["secretName"]
        in (serving / "serve.yaml").read_text().split("create secret generic ")[1]
    )  # the header says how to create it
    assert not any("token" in str(e).lower() for e in container["env"])  # not in the env
    assert service["spec"]["ports"][0]["targetPort"] in ports
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.pix2pixhd:5000"  # base's Service
    kust = yaml.safe_load((serving / "kustomization.yaml").read_text())
    assert "serve.yaml" in kust["resources"] and kust["namespace"] == "pix2pixhd"
    assert container["image"] in {i["name"] for i in kust["images"]}


def test_serve_autoscaler_and_disruption_budget_fit_the_deployment():
    docs = _serving_docs()
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert "replicas" not in deploy["spec"]  # the autoscaler owns the count
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deploy["apiVersion"],
        "Deployment",
        deploy["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "cpu" in container["resources"]["requests"]  # utilisation is relative to it
    lo, hi = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # a drain can always evict one pod, yet one keeps serving
    assert 1 <= pdb["spec"]["minAvailable"] < lo <= hi


def test_serving_kustomization_builds():
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the kustomize build of infra/k8s/serving is not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "infra/k8s/serving")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout)}
    assert {("Deployment", "serve"), ("HorizontalPodAutoscaler", "serve")} <= kinds
    assert {("PodDisruptionBudget", "serve"), ("Service", "serve")} <= kinds


def test_champion_inferenceservice_serves_the_registry_alias():
    """infra/k8s/serving: a KServe InferenceService whose predictor serves the registry
    alias through the cluster's MLflow service. The pod parts round-trip through the
    official Kubernetes API models (the kserve SDK does not install beside kfp's pins:
    it downgrades pandas); the rest is checked against the base stack and params.yaml."""
    from kubernetes.client import ApiClient

    serving = ROOT / "infra" / "k8s" / "serving"
    kust = yaml.safe_load((serving / "kustomization.yaml").read_text())
    docs = [d for res in kust["resources"] for d in yaml.safe_load_all((serving / res).read_text())]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]  # serve.yaml: own test
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    api = ApiClient()
    meta = api._ApiClient__deserialize(isvc["metadata"], "V1ObjectMeta")
    assert api.sanitize_for_serialization(meta) == isvc["metadata"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] >= 1
    (container,) = predictor["containers"]
    obj = api._ApiClient__deserialize(container, "V1Container")
    assert api.sanitize_for_serialization(obj) == container  # only real V1Container fields
    assert {i["name"] for i in kust["images"]} == {container["image"]}
    args = container["args"]
    name = load_params(ROOT / "params.yaml").evaluate.model_name
    assert container["command"] == ["mlflow", "models", "serve"]
    assert args[args.index("-m") + 1] == f"models:/{name}@champion"
    assert args[args.index("--env-manager") + 1] == "local"
    port = int(args[args.index("-p") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": port}
    env = {e["name"]: e.get("value") for e in container["env"]}
    base = ROOT / "infra" / "k8s" / "base"
    service = next(
        d for d in yaml.safe_load_all((base / "mlflow.yaml").read_text()) if d["kind"] == "Service"
    )
    namespace = yaml.safe_load((base / "kustomization.yaml").read_text())["namespace"]
    svc_port = service["spec"]["ports"][0]["port"]
    assert kust["namespace"] == namespace
    assert env["MLFLOW_TRACKING_URI"] == (
        f"http://{service['metadata']['name']}.{namespace}:{svc_port}"
    )
