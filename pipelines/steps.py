"""The pipeline's steps as kfp lightweight component functions.

Each body is shipped as source to the project image (``base_image``, kfp installed
there, ``install_kfp_package=False``) and imports the project: it turns its artifacts
into paths and calls the same ``components.<step>.run`` as the CLI and ``dvc.yaml``.
No ML logic lives here. Parameters common to all steps: ``params_yaml`` (params.yaml
as text, baked in at compile time) and ``overrides`` (``section.key=value`` strings,
applied after the typed pipeline parameters). The typed pipeline parameters keep their
pipeline names here; ``pipelines.parameters`` alone says which params key each sets.

(No ``from __future__ import annotations``: kfp reads these annotations at runtime.)
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def synth(
    params_yaml: str,
    overrides: list,
    dataset_uri: str,
    num_train: int,
    num_val: int,
    width: int,
    height: int,
    data: Output[Dataset],
) -> None:
    """The dataset: renders the bundled street scenes, or fetches ``dataset_uri``
    (``s3://`` prefix or a path visible to the pod) when one is given."""
    import shutil
    from pathlib import Path

    from components import storage
    from components import synth as step
    from pipelines.parameters import step_params

    values = {"num_train": num_train, "num_val": num_val, "width": width, "height": height}
    p = step_params(params_yaml, values, overrides)
    out = Path(data.path)
    if dataset_uri.startswith("s3://"):
        storage.download(dataset_uri, out)
    elif dataset_uri:
        shutil.copytree(dataset_uri, out)
    else:
        d = p.data
        step.run(out, d.num_train, d.num_val, d.width, d.height, d.seed)
    data.metadata["source"] = dataset_uri or "bundled synthetic street scenes"


def validate(
    params_yaml: str,
    overrides: list,
    width: int,
    height: int,
    data: Input[Dataset],
    report: Output[Artifact],
) -> None:
    """Great Expectations validation; fails the run on a bad dataset."""
    from pathlib import Path

    from components import validate as step
    from components.params import stage_model_config
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {"width": width, "height": height}, overrides)
    cfg = stage_model_config(p, "local")
    summary = step.run(
        Path(data.path),
        Path(report.path),
        p.data.layout,
        cfg.label_nc,
        cfg.use_instance_map,
        cfg.generator.size_multiple,
    )
    report.metadata["samples"] = int(summary.get("samples", 0))


def boundaries(
    params_yaml: str, overrides: list, data: Input[Dataset], out: Output[Dataset]
) -> None:
    """Instance boundary maps, precomputed once for both training stages."""
    from pathlib import Path

    from components import boundaries as step
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {}, overrides)
    step.run(Path(data.path), Path(out.path), p.data.layout)


def train(
    stage: str,
    params_yaml: str,
    overrides: list,
    width: int,
    height: int,
    ngf: int,
    niter_global: int,
    niter_decay_global: int,
    niter_local: int,
    niter_decay_local: int,
    tracking_uri: str,
    distributed: str,
    data: Input[Dataset],
    boundaries: Input[Dataset],
    report: Input[Artifact],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
    global_checkpoint: Input[Model] = None,
) -> None:
    """One training stage (``global``, or ``local`` initialised from ``global_checkpoint``);
    a GPU task, or with multi-node settings a launcher of a Kubeflow Trainer job (see
    ``pipelines.launcher``)."""
    from pipelines.launcher import TrainArtifacts, train_task
    from pipelines.parameters import as_overrides

    values = {"width": width, "height": height, "ngf": ngf}
    values.update(niter_global=niter_global, niter_decay_global=niter_decay_global)
    values.update(niter_local=niter_local, niter_decay_local=niter_decay_local)
    train_task(
        stage=stage,
        params_yaml=params_yaml,
        sets=as_overrides(values, overrides),
        artifacts=TrainArtifacts(data, boundaries, report, global_checkpoint, checkpoint),
        metrics=metrics,
        tracking_uri=tracking_uri,
        distributed=distributed,
    )


def features(
    params_yaml: str,
    overrides: list,
    data: Input[Dataset],
    checkpoint: Input[Model],
    model: Output[Model],
) -> None:
    """Encode instance features and cluster them per class (k-means)."""
    from pathlib import Path

    from components import features as step
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {}, overrides)
    ckpt = Path(checkpoint.path) / "latest.pth"
    step.run(ckpt, Path(data.path), Path(model.path), p.features, p.data.layout)


def segmenter(
    params_yaml: str,
    overrides: list,
    width: int,
    height: int,
    segmenter_weights: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """The frozen evaluation segmenter: trained here, or loaded from published
    ``segmenter_weights`` (path or s3:// URI)."""
    from pathlib import Path

    from components import segmenter as step
    from pipelines.parameters import step_params

    values = {"width": width, "height": height, "segmenter_weights": segmenter_weights}
    p = step_params(params_yaml, values, overrides)
    d = p.data
    summary = step.run(Path(data.path), Path(model.path), p.segmenter, d.width, d.height, d.layout)
    for k in ("val_real_pixel_accuracy", "val_real_mean_iou"):
        if summary.get(k) is not None:
            metrics.log_metric(k, float(summary[k]))


def evaluate(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    data: Input[Dataset],
    report: Input[Artifact],
    generator: Input[Model],
    segmenter: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> None:
    """Segmentation scores of generated vs real images; registers the generator."""
    from pathlib import Path

    from components import evaluate as step
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {}, overrides)
    result = step.run(
        checkpoint=Path(generator.path) / "model.pth",
        segmenter=Path(segmenter.path) / "segmenter.pth",
        data=Path(data.path),
        out=Path(evaluation.path),
        params=p.evaluate,
        layout=p.data.layout,
        tracking_uri=tracking_uri or None,
        orchestrator="kfp",
        experiment=p.tracking.experiment,
        data_summary=Path(report.path) / "summary.json",
    )
    for k, v in result.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))


def export(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    generator: Input[Model],
    evaluation: Input[Artifact],
    onnx_model: Output[Model],
) -> None:
    """The whole generator as one ONNX graph (+ fp16 copy), logged beside the version."""
    from pathlib import Path

    from components import export as step
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {}, overrides)
    out = Path(onnx_model.path)
    out.mkdir(parents=True, exist_ok=True)
    summary = step.run(
        checkpoint=Path(generator.path) / "model.pth",
        out=out / "model.onnx",
        tracking_uri=tracking_uri or None,
        registration=Path(evaluation.path) / "registration.json",
        experiment=p.tracking.experiment,
        orchestrator="kfp",
    )
    onnx_model.metadata["max_abs_diff_vs_torch"] = float(summary["max_abs_diff_vs_torch"])


def promote(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    min_delta: float,
    evaluation: Input[Artifact],
    decision: Output[Artifact],
) -> None:
    """Move the `champion` alias to this version if it beats the champion."""
    import json
    from pathlib import Path

    from components import registry
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {"min_delta": min_delta}, overrides)
    reg = json.loads((Path(evaluation.path) / "registration.json").read_text())
    result = registry.promote(
        reg["name"],
        str(reg["version"]),
        p.promote.metric,
        p.promote.min_delta,
        tracking_uri or None,
    )
    Path(decision.path).write_text(json.dumps(result, indent=2) + "\n")
    decision.metadata["promoted"] = bool(result.get("promoted"))
