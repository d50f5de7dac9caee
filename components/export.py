"""Step `export`: the generator of a checkpoint as one ONNX graph (+ an fp16 copy for GPU
serving), checked with onnx.checker and against PyTorch with onnxruntime, then logged to
MLflow as a pyfunc model and, given evaluate's ``evaluation.json``, registered as a new
version of the generator with its scores: the servable model that `promote` may make
the champion.

The logged (and registered) model holds what serving needs and nothing else: the ONNX
graph, the wrapper and the contract module (``code/``), a signature and a street scene
as input example. The checkpoint is linked, not copied: the run that logged it (the
`features` or `train` run whose ``checkpoint_sha256`` tag matches; failing that, this
export's run logs it) is recorded as ``checkpoint_uri`` (``runs:/<run>/<path>``) on the
logged model and the model version. The evaluation scores are the logged model's
metrics, tied to the evaluation dataset; the version's description says what it is,
its scores and the data hash.

Registering is idempotent per checkpoint: a version whose ``checkpoint_sha256`` tag
matches (same weights, same serving format) is reused instead of adding a new one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.registry import RegistryError
from components.signature import PositiveInt
from components.tracking import Orchestrator, Tracker, file_sha256, run_tags
from model.checkpoint import build_model, load_checkpoint
from model.config import LayoutOrAuto
from model.errors import InputError
from model.export import example_inputs, export_onnx, graph_hash, input_names, load_verified
from model.fileio import StagedFiles, prepare_out_file, write_json, write_metrics

log = logging.getLogger(__name__)

# max |onnxruntime - PyTorch| accepted for an fp32 graph (images in [-1, 1]; 1/255 is
# one 8-bit level): the cached graphs of `components.engine` must meet it.
PARITY_ATOL = 1e-4
# bump when the pyfunc wrapper's contract changes (2: model.model_contract's feature draws
# and smallest sizes)
SERVING_FORMAT = "pyfunc-onnx-2"


def parity(model: Any, onnx_path: Path, sizes: tuple[tuple[int, int, int], ...]) -> float:
    """Max |onnxruntime - PyTorch| over random inputs of the given (N, H, W)."""
    from components.onnx_session import make_session

    session = make_session(onnx_path)
    names = input_names(model)
    worst = 0.0
    for n, h, w in sizes:
        inputs = example_inputs(model, n, h, w)
        inst = inputs[1] if model.cfg.use_instance_map else None
        feats = inputs[-1] if model.cfg.use_instance_features else None
        ref = model.generate(inputs[0], inst, features=feats)
        got = session.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})[0]
        worst = max(worst, float(np.abs(got - ref.numpy()).max()))
    return worst


#: the input example's street scene (model/synth.py, the bundled dataset's renderer)
EXAMPLE_SCENE = {"width": 64, "height": 32, "seed": 0}


def street_scene(model: Any, specs: list[Any]) -> dict[str, np.ndarray] | None:
    """A real street scene as input example: label and instance maps rendered by the
    bundled dataset's renderer at 64x32; None when the model's label space is not the
    Cityscapes ids the scene uses, or it needs explicit features."""
    from model.synth import render_scene

    names = [spec.name for spec in specs]
    if "features" in names:
        return None
    scene = render_scene(
        np.random.default_rng(EXAMPLE_SCENE["seed"]),
        EXAMPLE_SCENE["width"],
        EXAMPLE_SCENE["height"],
    )
    if int(scene.label.max()) >= model.cfg.label_nc:
        return None
    maps = {"label": scene.label, "instance": scene.instance}
    return {name: maps[name][None, None].astype(np.int64) for name in names}


def serving_signature(model: Any, centres: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """The pyfunc signature and an input example: a street scene (:func:`street_scene`),
    else random maps at a size that is not a multiple of the graph's (the wrapper pads
    and crops)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    cfg = model.cfg
    maps = (-1, 1, -1, -1)
    specs = [TensorSpec(np.dtype(np.int64), maps, "label")]
    if cfg.use_instance_map:
        specs.append(TensorSpec(np.dtype(np.int64), maps, "instance"))
    if cfg.use_instance_features and not centres:  # without centres features are required
        specs.append(
            TensorSpec(np.dtype(np.float32), (-1, cfg.encoder.feat_num, -1, -1), "features")
        )
    signature = ModelSignature(
        inputs=Schema(specs),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), "image")]),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),
    )
    scene = street_scene(model, specs)
    if scene is not None:
        return signature, scene
    m = cfg.generator.size_multiple
    tensors = example_inputs(model, 1, 2 * m, 4 * m)
    example = {
        spec.name: t[..., : 2 * m - 3, : 4 * m - 5].numpy()
        for spec, t in zip(specs, tensors, strict=False)
    }
    return signature, example


def code_packages(root: Path) -> list[str]:
    """The python model's code under ``root``, as packages of the same import names:
    ``components/pyfunc_model.py`` and the project modules it imports
    (``model/model_contract.py``, ``model/errors.py``), each package with an empty
    ``__init__.py``. Passed as ``code_paths``, they let the pickled model load where the
    project is not installed."""
    from components import pyfunc_model
    from model import errors, model_contract

    shipped = {"components": (pyfunc_model,), "model": (model_contract, errors)}
    for package, modules in shipped.items():
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        for module in modules:
            source = Path(module.__file__)
            (root / package / source.name).write_text(source.read_text())
    return [str(root / package) for package in shipped]


def log_servable_model(
    onnx_path: Path,
    signature: Any,
    example: dict[str, np.ndarray],
    tags: dict[str, str] | None = None,
) -> Any:
    """Log the pyfunc model into the active MLflow run; returns its ModelInfo. Its
    artifacts are the ONNX graph only (the checkpoint is linked by ``tags``)."""
    import importlib.metadata as md

    import mlflow

    from components import pyfunc_model

    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name="generator",
            python_model=pyfunc_model.OnnxGenerator(),
            artifacts={pyfunc_model.ONNX_ARTIFACT: str(onnx_path)},
            code_paths=code_packages(Path(tmp)),
            signature=signature,
            input_example=(example, {"seed": 0}),
            tags=tags or None,
            pip_requirements=[
                f"mlflow=={md.version('mlflow')}",
                f"onnxruntime=={md.version('onnxruntime')}",
                f"numpy=={md.version('numpy')}",
            ],
        )


def read_evaluation(path: Path, checkpoint_sha256: str) -> dict[str, Any]:
    try:
        evaluation = json.loads(Path(path).read_text())
        scores = {k: float(v) for k, v in evaluation["scores"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not an evaluation.json written by evaluate ({exc})") from None
    if evaluation.get("checkpoint_sha256") not in (None, checkpoint_sha256):
        raise InputError(
            f"{path}: the evaluation is of another checkpoint (sha256 "
            f"{str(evaluation['checkpoint_sha256'])[:12]}..., this one {checkpoint_sha256[:12]}...)"
        )
    return {**evaluation, "scores": scores}


def run(
    checkpoint: Path,
    out: Path,
    fp16: bool = True,
    tracking: bool = True,
    tracking_uri: str | None = None,
    evaluation: Path | None = None,
    experiment: str = "pix2pixhd",
    orchestrator: Orchestrator | None = None,
    tracking_optional: bool = False,
    quantize: Literal["int8"] | None = None,
    data: Path | None = None,
    calibration_samples: PositiveInt = 16,
    layout: LayoutOrAuto = "auto",
) -> dict[str, Any]:
    """Export the generator to ONNX (label ids in, image out) and log it as a pyfunc model.

    With ``evaluation``, registering the model is required: a store that cannot be
    reached stops the step before the work, a failed registration is an error (exit 2)
    and no registration.json is left for `promote`; with ``tracking_optional`` the step
    finishes and registration.json records why nothing was registered. The graphs and
    JSON files are replaced as one set: a failed run leaves the previous ones (but never
    the previous registration.json).

    Args:
        checkpoint: the generator checkpoint (features' ``model.pth``).
        out: the ``model.onnx`` to write; ``model_fp16.onnx``, ``export_summary.json``
            (its numbers also in ``metrics.json``) and ``registration.json`` go beside it.
        fp16: also write the fp16 copy for GPU serving.
        tracking: log and register the pyfunc model in MLflow.
        tracking_uri: MLflow URI (default: MLflow's own default).
        evaluation: evaluate's evaluation.json for this very checkpoint (its sha256
            must match): the scores, dataset hash and model name to register with.
        experiment: the MLflow experiment.
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        tracking_optional: a tracking failure is logged instead of being an error.
        quantize: ``"int8"``: also write ``<out>_int8.onnx`` (components/quantize.py).
        data: the dataset whose train split calibrates the int8 graph.
        calibration_samples: training label maps used for calibration.
        layout: the dataset layout (auto, cityscapes, folder).
    """
    if quantize not in (None, "int8"):
        raise InputError(f"--quantize {quantize!r}: expected int8")
    if quantize and data is None:
        raise InputError("--quantize int8 needs --data DIR: its training label maps calibrate it")
    if quantize and calibration_samples < 1:
        raise InputError("--calibration-samples must be at least 1")
    out = prepare_out_file(out)
    registration_file = out.parent / "registration.json"
    registration_file.unlink(missing_ok=True)  # never leave a stale one for promote
    ckpt_sha = file_sha256(checkpoint)
    evaluated = read_evaluation(evaluation, ckpt_sha) if evaluation is not None else None
    must_register = bool(tracking and evaluated and evaluated.get("model_name"))
    if must_register and not tracking_optional:
        probe_tracker = Tracker(tracking_uri=tracking_uri)
        if not probe_tracker.connect():
            raise RegistryError(
                f"cannot register the model: {probe_tracker.failure}; nothing was exported. "
                "Pass --no-tracking, or set tracking.optional: true to export without "
                "registering"
            )
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    tracker = open_run(
        checkpoint, ckpt, ckpt_sha, evaluated, out, fp16, quantize, data, tracking,
        tracking_uri, experiment, orchestrator,
    )  # fmt: skip
    status = "FAILED"
    try:
        with StagedFiles(out.parent) as staged:  # the previous set stays until commit()
            summary, graph = _export_graphs(
                model, ckpt, staged, out, fp16, quantize, data, calibration_samples, layout
            )
            summary["checkpoint_sha256"] = ckpt_sha
            if tracking:
                summary.update(
                    _log_and_register(
                        tracker,
                        model,
                        graph,
                        checkpoint,
                        ckpt,
                        ckpt_sha,
                        evaluated,
                        float(summary["max_abs_diff_vs_torch"]),
                        tracking_uri,
                    )
                )
                if must_register and "registered" not in summary:
                    reason = summary.pop("registration_failure", "the MLflow store failed")
                    if not tracking_optional:
                        raise RegistryError(
                            f"cannot register the model: {reason}; no registration.json written"
                        )
                    log.warning(
                        "the model was not registered: %s (tracking.optional is true)", reason
                    )
                    summary["registered"] = {"registered": False, "reason": reason}
                if "registered" in summary:
                    reg = summary["registered"]
                    write_json(staged.path(registration_file.name), reg, indent=None)
            write_metrics(staged.path("metrics.json"), summary)  # its numbers only
            write_json(staged.path("export_summary.json"), summary)
            staged.commit()
        status = "FINISHED"
    finally:
        tracker.end(status)
    log.info("exported %s (max |onnx - torch| = %.2e)", out, summary["max_abs_diff_vs_torch"])
    return summary


def _export_graphs(
    model: Any,
    ckpt: dict[str, Any],
    staged: StagedFiles,
    out: Path,
    fp16: bool,
    quantize: str | None,
    data: Path | None,
    calibration_samples: int,
    layout: str,
) -> tuple[dict[str, Any], Path]:
    """The fp32 graph (parity-checked against PyTorch), its fp16 and int8 copies, written
    into ``staged`` under their final names; returns the summary (final paths) and the
    staged fp32 graph."""
    centres = ckpt.get("cluster_centers") or None
    graph = export_onnx(model, staged.path(out.name), cluster_centers=centres)
    m = model.cfg.generator.size_multiple
    summary: dict[str, Any] = {
        "onnx": str(out),
        "max_abs_diff_vs_torch": parity(model, graph, ((1, 2 * m, 4 * m), (2, 3 * m, 5 * m))),
        "inputs": input_names(model),
    }
    if fp16:
        name = out.stem + "_fp16.onnx"
        export_onnx(model, staged.path(name), fp16=True, cluster_centers=centres)
        summary["onnx_fp16"] = str(out.with_name(name))
    summary["onnx_sha256"] = graph_hash(load_verified(graph))
    if quantize == "int8":
        from components.quantize import calibration_feeds, quantize_int8
        from components.quantize import max_diff as int8_diff

        width, height = ckpt.get("image_size") or (4 * m, 2 * m)
        feeds = calibration_feeds(
            graph, data, (int(width), int(height)), calibration_samples, layout
        )
        name = out.stem + "_int8.onnx"
        int8_path = quantize_int8(graph, staged.path(name), feeds)
        summary["onnx_int8"] = str(out.with_name(name))
        summary["int8_vs_fp32_on_calibration"] = int8_diff(graph, int8_path, feeds)
        summary["int8_calibration"] = {"samples": len(feeds), "size": f"{width}x{height}"}
    return summary, graph


def open_run(
    checkpoint: Path,
    ckpt: dict[str, Any],
    ckpt_sha: str,
    evaluated: dict[str, Any] | None,
    out: Path,
    fp16: bool,
    quantize: str | None,
    data: Path | None,
    tracking: bool,
    tracking_uri: str | None,
    experiment: str,
    orchestrator: str | None,
) -> Tracker:
    """The step's MLflow run, opened before the work (nested under the pipeline
    execution's run): lineage tags, params, the calibration data as input dataset."""
    tracker = Tracker(enabled=tracking, tracking_uri=tracking_uri)
    tags = run_tags("export", orchestrator, checkpoint_sha256=ckpt_sha)
    if evaluated:
        tags["evaluate_run_id"] = str(evaluated.get("run_id") or "")
        tags["dataset_hash"] = str(evaluated.get("dataset_hash") or "")
    tracker.start(experiment, "export", tags)
    params = {"checkpoint": str(checkpoint), "out": str(out), "fp16": fp16}
    tracker.log_params({**params, "quantize": quantize, "serving_format": SERVING_FORMAT})
    if quantize and data is not None:  # its training label maps calibrate the int8 graph
        digest = str(ckpt.get("dataset_hash") or "")
        tracker.log_input_dataset(str(data), "train", digest, context="calibration")
    return tracker


def checkpoint_link(tracker: Tracker, checkpoint: Path, ckpt_sha: str) -> dict[str, str]:
    """Where the checkpoint is kept in the tracking store, for the model's lineage:
    ``checkpoint_uri`` (``runs:/<run>/<artifact path>``) and ``checkpoint_run_id``.
    The newest finished run, in any experiment, whose ``checkpoint_sha256`` tag is this
    file's and that logged it (tag ``checkpoint_artifact``: `features`, `train`, an
    earlier export); failing that, this export's run logs it. {} when tracking failed."""

    def find(mlflow: Any) -> tuple[str, str] | None:
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            experiments,
            f"tags.checkpoint_sha256 = '{ckpt_sha}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        for run in runs:
            path = run.data.tags.get("checkpoint_artifact")
            if path and run.info.run_id != tracker.run_id:
                return run.info.run_id, path
        return None

    found = tracker._call("search_runs", find)
    if found is None and tracker.active:
        tracker.log_artifact(checkpoint, "checkpoint")  # the run's, not the model's
        path = f"checkpoint/{Path(checkpoint).name}"
        tracker.set_tags({"checkpoint_artifact": path})
        found = (str(tracker.run_id), path) if tracker.active else None
    if found is None:
        return {}
    return {"checkpoint_uri": f"runs:/{found[0]}/{found[1]}", "checkpoint_run_id": found[0]}


def version_description(
    evaluated: dict[str, Any], link: dict[str, str], ckpt_sha: str, git_sha: str
) -> str:
    """The model version's description: what it is, its scores, the data, the lineage."""
    scores = evaluated["scores"]
    shown = [
        f"{label} {scores[key]:.4f}"
        for key, label in (
            ("mean_iou", "mean IoU"),
            ("pixel_accuracy", "pixel accuracy"),
            ("real_mean_iou", "real photos' mean IoU"),
            ("kid_inception", "KID (Inception)"),
            ("kid_seg", "KID (segmenter features)"),
        )
        if key in scores
    ]
    data = evaluated.get("dataset") or {}
    return (
        "pix2pixHD generator: Cityscapes-style label ids (+ instance ids) in, a photo "
        "out, as one ONNX graph run by ONNX Runtime through the pyfunc wrapper "
        "(model/model_contract.py: any H x W, maps edge-padded to the graph's size, "
        "instance features drawn from the cluster centres by seed).\n"
        f"Evaluation on '{data.get('name', 'val')}' "
        f"(dataset hash {evaluated.get('dataset_hash') or 'unknown'}): "
        f"{', '.join(shown) or 'no scores'}; mean IoU of the frozen segmenter on the "
        "generated images.\n"
        f"Checkpoint (linked, not part of this model): {link.get('checkpoint_uri', 'not logged')}"
        f" (sha256 {ckpt_sha[:16]}...); code: git {git_sha[:12]}."
    )


def _log_and_register(
    tracker: Tracker,
    model: Any,
    onnx_path: Path,
    checkpoint: Path,
    ckpt: dict[str, Any],
    ckpt_sha: str,
    evaluated: dict[str, Any] | None,
    max_diff: float,
    tracking_uri: str | None,
) -> dict[str, Any]:
    """Log the servable model into the step's run and register it, unless a version
    already serves this checkpoint: ``registered`` (or ``registration_failure``) and
    the model URI."""
    from components import registry

    name = evaluated.get("model_name") if evaluated else None
    existing = None
    if name:
        existing = registry.find_version(name, ckpt_sha, SERVING_FORMAT, tracking_uri)
    if existing is not None:
        log.info("%s v%s already serves this checkpoint: not registered again", name, existing)
        tracker.set_tags({"registered_version": f"{name}/{existing}", "reused": "true"})
        return {"registered": {"name": name, "version": existing, "reused": True}}
    signature, example = serving_signature(model, bool(ckpt.get("cluster_centers")))
    link = checkpoint_link(tracker, checkpoint, ckpt_sha)
    dataset_hash = str(evaluated.get("dataset_hash") or "") if evaluated else ""
    model_tags = {"checkpoint_sha256": ckpt_sha, "serving_format": SERVING_FORMAT, **link}
    if dataset_hash:
        model_tags["dataset_hash"] = dataset_hash
    info = tracker._call(
        "pyfunc.log_model",
        lambda mlflow: log_servable_model(onnx_path, signature, example, model_tags),
    )
    result: dict[str, Any] = {}
    if info is None:
        result["registration_failure"] = tracker.failure or "the model could not be logged"
        return result
    model_id = getattr(info, "model_id", None)
    tracker.log_metrics({"onnx_max_abs_diff": max_diff}, 0, model_id=model_id)
    if evaluated:  # the model's scores, tied to the data they were measured on
        data = evaluated.get("dataset") or {}
        scored = None
        if data.get("source"):
            scored = tracker.dataset(data["source"], data.get("name", "val"), dataset_hash)
        tracker.log_metrics(evaluated["scores"], 0, dataset=scored, model_id=model_id)
    result["mlflow_model_uri"] = info.model_uri
    if evaluated and evaluated.get("model_name") and tracker.run_id:
        git_sha = run_tags("export")["git_sha"]
        try:
            version = registry.register_generator(
                evaluated["model_name"],
                tracker.run_id,
                info.model_uri,
                evaluated["scores"],
                {
                    "dataset_hash": dataset_hash,
                    "git_sha": git_sha,
                    "checkpoint": str(checkpoint),
                    "checkpoint_sha256": ckpt_sha,
                    **link,
                    "content_sha256": str(ckpt.get("content_sha256") or ""),
                    "onnx_sha256": graph_hash(load_verified(onnx_path)),
                    "serving_format": SERVING_FORMAT,
                    "evaluate_run_id": str(evaluated.get("run_id") or ""),
                },
                tracking_uri,
                model_id=model_id,
                description=version_description(evaluated, link, ckpt_sha, git_sha),
            )
        except Exception as exc:  # any registry failure: reported by run(), never ignored
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result["registration_failure"] = f"registration failed ({type(exc).__name__}: {first})"
            return result
        tracker.set_tags({"registered_version": f"{evaluated['model_name']}/{version}"})
        result["registered"] = {
            "name": evaluated["model_name"],
            "version": version,
            "model_uri": info.model_uri,
        }
    return result
