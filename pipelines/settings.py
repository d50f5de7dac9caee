"""Compile-time settings of the Kubeflow pipeline (images, accelerators, secrets,
multi-node training). Light (no kfp): the command line reads its fields as options."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from components.signature import PositiveInt

CHECKPOINT_MOUNT = "/pix2pixhd-checkpoints"


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how the pipeline's tasks run in the cluster."""

    # the CPU steps' image, pinned: REG/pix2pixhd-cpu@sha256:... or a release tag (not :latest)
    image: str = ""
    gpu_image: str = ""  # the training steps' image, pinned likewise
    accelerator: str = "nvidia.com/gpu"  # the GPU resource name of the training pods
    gpus: PositiveInt = 1  # GPUs per training pod (per node with several nodes)
    gpu_node_selector: Mapping[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    s3_secret: str = "pix2pixhd-s3"  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    s3_endpoint: str = ""  # AWS_ENDPOINT_URL of every task (MinIO / Ceph); empty: AWS
    mlflow_uri: str = ""  # MLFLOW_TRACKING_URI of every task; empty: the tracking_uri parameter
    shm_size: str = "16Gi"  # /dev/shm of the training pods (data loader workers)
    # training nodes; > 1 runs each training stage as a Kubeflow Trainer job
    num_nodes: PositiveInt = 1
    # multi-node: Trainer v2 TrainJob or Training Operator v1 PyTorchJob
    engine: Literal["trainjob", "pytorchjob"] = "trainjob"
    namespace: str = "kubeflow"  # where the training jobs run
    # retries of a failed training task (a lost pod, a preempted node), backing off 30 s x2
    retries: int = 2
    # a PersistentVolumeClaim for the training tasks' checkpoints: a retried task resumes
    # from its last checkpoint there instead of starting over (empty: none, retries restart)
    checkpoint_pvc: str = ""

    def checkpoint_dir(self) -> str:
        """Where the training pods mount ``checkpoint_pvc`` ("" without one)."""
        return CHECKPOINT_MOUNT if self.checkpoint_pvc else ""

    def distributed(self) -> str:
        """The training tasks' launch settings, fixed at compile time (JSON)."""
        if self.num_nodes <= 1:
            return json.dumps(
                {
                    "num_nodes": 1,
                    "gpus_per_node": self.gpus,
                    "checkpoint_dir": self.checkpoint_dir(),
                }
            )
        return json.dumps(
            {
                "num_nodes": self.num_nodes,
                "gpus_per_node": self.gpus,
                "engine": self.engine,
                "image": self.gpu_image,
                "namespace": self.namespace,
                "secret": self.s3_secret,
            }
        )


def local_distributed(num_nodes: int, image: str, mount: str, backoff_limit: int = 3) -> str:
    """The training tasks' launch settings of ``pipeline run --local --runner docker
    --nodes N``: each stage a TrainJob whose N nodes are containers of this machine's
    Docker engine (``pipelines.local_nodes``), mounting the pipeline root ``mount``; a
    lost node is started again up to ``backoff_limit`` times (JSON)."""
    return json.dumps(
        {
            "num_nodes": num_nodes,
            "gpus_per_node": 1,
            "engine": "docker",
            "image": image,
            "mount": mount,
            "backoff_limit": backoff_limit,
        }
    )
