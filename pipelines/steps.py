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

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


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
    summary = step.run(  # the suite generated from the params (= data/expectations/)
        Path(data.path),
        Path(report.path),
        p.data.layout,
        cfg.label_nc,
        cfg.use_instance_map,
        cfg.generator.size_multiple,
        min_size=step.min_file_size(p.data.preprocess, p.data.crop_size),
        palette=p.data.palette or None,
    )
    report.metadata["samples"] = int(summary.get("samples", 0))


def drift(
    params_yaml: str,
    overrides: list,
    width: int,
    height: int,
    data: Input[Dataset],
    reference: Input[Artifact],
    report: Output[Artifact],
) -> None:
    """The evaluation (val) split against the training split's profile (``reference``:
    validate's report, its summary.json); fails the run on drift."""
    from pathlib import Path

    from components import validate as step
    from components.params import stage_model_config
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {"width": width, "height": height}, overrides)
    cfg = stage_model_config(p, "local")
    v = p.validate
    summary = step.run(
        Path(data.path),
        Path(report.path),
        p.data.layout,
        cfg.label_nc,
        cfg.use_instance_map,
        cfg.generator.size_multiple,
        splits=("val",),
        reference=Path(reference.path) / "summary.json",
        drift_ratio=v.drift_ratio,
        drift_min_delta=v.drift_min_delta,
        drift_z=v.drift_z,
        palette=p.data.palette or None,
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
    pipeline_run: str,
    data: Input[Dataset],
    boundaries: Input[Dataset],
    report: Input[Artifact],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
    global_checkpoint: Input[Model] = None,
) -> None:
    """One training stage (``global``, or ``local`` initialised from ``global_checkpoint``);
    a GPU task, or with multi-node settings a launcher of a Kubeflow Trainer job (see
    ``pipelines.launcher``). ``metrics``: the final losses."""
    import os

    from pipelines.launcher import TrainArtifacts, train_task

    os.environ["PIX2PIXHD_PIPELINE_RUN"] = pipeline_run  # the runs' shared MLflow tag
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
    step.run(
        ckpt, Path(data.path), Path(model.path), p.features, p.data.layout, palette=p.data.palette
    )


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
    summary = step.run(
        Path(data.path), Path(model.path), p.segmenter, d.width, d.height, d.layout, d.palette
    )
    for k in ("val_real_pixel_accuracy", "val_real_mean_iou"):
        if summary.get(k) is not None:
            metrics.log_metric(k, float(summary[k]))


def evaluate(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    pipeline_run: str,
    data: Input[Dataset],
    report: Input[Artifact],
    generator: Input[Model],
    segmenter: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    samples: Output[HTML],
) -> None:
    """Segmentation scores of generated vs real images: flat ``metrics`` (pixel
    accuracy and mIoU of both, their ratio), the ``confusion`` matrix of the generated
    images over the 19 train ids, and the sample grid as ``samples`` (HTML)."""
    import base64
    import json
    import os
    from pathlib import Path

    from components import evaluate as step
    from pipelines.parameters import step_params

    os.environ["PIX2PIXHD_PIPELINE_RUN"] = pipeline_run
    p = step_params(params_yaml, {}, overrides)
    out = Path(evaluation.path)
    result = step.run(
        checkpoint=Path(generator.path) / "model.pth",
        segmenter=Path(segmenter.path) / "segmenter.pth",
        data=Path(data.path),
        out=out,
        params=p.evaluate,
        layout=p.data.layout,
        tracking_uri=tracking_uri or None,
        orchestrator="kfp",
        experiment=p.tracking.experiment,
        data_summary=Path(report.path) / "summary.json",
        palette=p.data.palette,
    )
    for k, v in result["scores"].items():
        metrics.log_metric(k, float(v))
    metrics.log_metric("images", float(result["images"]))
    cm = json.loads((out / "confusion_matrix.json").read_text())
    confusion.log_confusion_matrix(cm["categories"], cm["matrix"])
    png = base64.b64encode((out / "samples.png").read_bytes()).decode()
    Path(samples.path).write_text(
        "<html><body><h3>label | generated | real | segmentation of generated</h3>"
        f'<img src="data:image/png;base64,{png}" style="max-width:100%"/></body></html>\n'
    )


def export(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    pipeline_run: str,
    generator: Input[Model],
    evaluation: Input[Artifact],
    onnx_model: Output[Model],
) -> None:
    """The whole generator as one ONNX graph (+ fp16 copy), logged to MLflow as a pyfunc
    model and registered with evaluate's scores (``registration.json`` in the output);
    with ``tracking.optional`` a registry outage is recorded there instead of failing."""
    import os
    from pathlib import Path

    from components import export as step
    from pipelines.parameters import step_params

    os.environ["PIX2PIXHD_PIPELINE_RUN"] = pipeline_run
    p = step_params(params_yaml, {}, overrides)
    out = Path(onnx_model.path)
    out.mkdir(parents=True, exist_ok=True)
    summary = step.run(
        checkpoint=Path(generator.path) / "model.pth",
        out=out / "model.onnx",
        tracking_uri=tracking_uri or None,
        evaluation=Path(evaluation.path) / "evaluation.json",
        experiment=p.tracking.experiment,
        orchestrator="kfp",
        tracking_optional=p.tracking.optional,
    )
    onnx_model.metadata["max_abs_diff_vs_torch"] = float(summary["max_abs_diff_vs_torch"])
    if "registered" in summary:
        onnx_model.metadata["registered_version"] = str(summary["registered"]["version"])


def promote(
    params_yaml: str,
    overrides: list,
    tracking_uri: str,
    min_delta: float,
    exported: Input[Model],
    decision: Output[Artifact],
) -> None:
    """Move the `champion` alias to the exported version if it beats the champion by
    more than ``min_delta``."""
    from pathlib import Path

    from components import promote as step
    from pipelines.parameters import step_params

    p = step_params(params_yaml, {"min_delta": min_delta}, overrides)
    result = step.run(
        name=p.evaluate.model_name,
        registration=Path(exported.path) / "registration.json",
        metric=p.promote.metric,
        min_delta=p.promote.min_delta,
        out=Path(decision.path),
        tracking_uri=tracking_uri or None,
    )
    decision.metadata["promoted"] = bool(result.get("promoted"))
