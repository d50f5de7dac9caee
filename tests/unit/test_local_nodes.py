"""pipelines.local_nodes without an engine: Kubernetes' $(VAR) expansion, what the torch
runtime gives each node, and the trainer read from a rendered TrainJob."""

from __future__ import annotations

import pytest

from model.errors import Pix2PixHDError
from pipelines import trainjob
from pipelines.local_nodes import TrainerSpec, expand


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A):$(B)", "10.0.0.1:29500"),
        ("$(MISSING)", "$(MISSING)"),  # undefined: left as written
        ("$$(A)", "$(A)"),  # escaped
        ("a$$b", "a$b"),
        ("$(A", "$(A"),
        ("plain", "plain"),
    ],
)
def test_expand_follows_the_kubernetes_rule(text, expected):
    assert expand(text, {"A": "10.0.0.1", "B": "29500"}) == expected


def _manifest():
    spec = trainjob.JobSpec(
        name="p2phd-global-0a1b",
        image="pix2pixhd-cpu:local",
        args=["train", "--stage", "global", "--out", "/r/out"],
        num_nodes=2,
        gpus_per_node=1,
        env={"MLFLOW_TRACKING_URI": "sqlite:////r/m.db"},
        secret_env="s3",
    )
    return trainjob.render(spec, "trainjob")


def test_each_node_gets_the_runtime_variables_and_the_manifest_command():
    t = TrainerSpec.of(_manifest(), {"AWS_ACCESS_KEY_ID": "id"})
    assert t.num_nodes == 2 and t.nproc_per_node == 1
    # a Secret's variable comes from this environment when it is there, else not at all
    assert t.env["AWS_ACCESS_KEY_ID"] == "id" and "AWS_SECRET_ACCESS_KEY" not in t.env
    env = t.node_env(1, 29555)
    assert env["PET_NODE_RANK"] == "1" and env["PET_NNODES"] == "2"
    # node 0 hosts the rendezvous store, as the owner of the endpoint's address would
    assert env["PET_RDZV_CONF"] == "is_host=0" and t.node_env(0, 1)["PET_RDZV_CONF"] == "is_host=1"
    cmd = t.node_command(env)
    assert cmd[0] == "torchrun" and "--rdzv-endpoint=127.0.0.1:29555" in cmd
    assert cmd[cmd.index("-m") + 1 :][:4] == ["pix2pixhd", "train", "--stage", "global"]
    assert t.checkpoint() == "/r/out/latest.pth"


def test_a_pytorchjob_is_refused_with_one_line():
    spec = trainjob.JobSpec(name="x", image="i", args=[], num_nodes=2)
    with pytest.raises(Pix2PixHDError, match="local nodes run TrainJob manifests"):
        TrainerSpec.of(trainjob.render(spec, "pytorchjob"), {})
