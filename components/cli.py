"""The `pix2pixhd` command line: one subcommand per pipeline step.

Each subcommand parses its arguments and calls the step's ``run(...)`` in
``components.<step>``; heavy libraries are imported inside the step, not at start-up.
Errors the user can fix print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger("pix2pixhd")


def _cmd_import_checkpoint(args: argparse.Namespace) -> dict:
    from components import import_checkpoint

    return import_checkpoint.run(
        generator=args.generator,
        out=args.out,
        label_nc=args.label_nc,
        use_instance_map=not args.no_instance_map,
        encoder=args.encoder,
        discriminator=args.discriminator,
    )


def _cmd_generate(args: argparse.Namespace) -> dict:
    from components import generate

    return generate.run(
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        seed=args.seed,
        labels=args.labels,
        out=args.out,
        instances=args.instances,
        images=args.images,
        batch_size=args.batch_size,
        device=args.device,
        engine=args.engine,
    )


def _add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="onnx: ONNX Runtime on the checkpoint's graph, exported once and cached beside "
        "it; torch: PyTorch eager; auto (default): onnx unless the work needs PyTorch "
        "(features encoded from --images, RGB-label models, CUDA without onnxruntime-gpu)",
    )


def _params(args: argparse.Namespace):
    from components.params import load_params

    return load_params(args.params, args.set or [])


def _cmd_train(args: argparse.Namespace) -> dict:
    from components import train

    return train.run(
        params=_params(args),
        stage=args.stage,
        data=args.data,
        out=args.out,
        init_checkpoint=args.init,
        resume=args.resume,
        boundaries=args.boundaries,
        data_summary=args.data_summary,
        tracking=not args.no_tracking,
        tracking_uri=args.tracking_uri,
        orchestrator=args.orchestrator,
        device=args.device,
    )


def _cmd_features(args: argparse.Namespace) -> dict:
    from components import features

    params = _params(args)
    return features.run(
        checkpoint=args.checkpoint,
        data=args.data,
        out=args.out,
        cfg=params.features,
        layout=params.data.layout,
    )


def _cmd_segmenter(args: argparse.Namespace) -> dict:
    from components import segmenter

    params = _params(args)
    return segmenter.run(
        data=args.data,
        out=args.out,
        params=params.segmenter,
        width=params.data.width,
        height=params.data.height,
        layout=params.data.layout,
    )


def _cmd_evaluate(args: argparse.Namespace) -> dict:
    from components import evaluate

    params = _params(args)
    return evaluate.run(
        checkpoint=args.checkpoint,
        segmenter=args.segmenter,
        data=args.data,
        out=args.out,
        params=params.evaluate,
        layout=params.data.layout,
        tracking=not args.no_tracking,
        tracking_uri=args.tracking_uri,
        orchestrator=args.orchestrator,
        experiment=params.tracking.experiment,
        data_summary=args.data_summary,
    )


def _cmd_promote(args: argparse.Namespace) -> dict:
    import json as _json

    from components import registry

    params = _params(args)
    name, version = args.model_name or params.evaluate.model_name, args.version
    if args.registration is not None:
        reg = _json.loads(Path(args.registration).read_text())
        name, version = reg["name"], str(reg["version"])
    min_delta = params.promote.min_delta if args.min_delta is None else args.min_delta
    result = registry.promote(name, version, params.promote.metric, min_delta, args.tracking_uri)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_json.dumps(result, indent=2) + "\n")
    return result


def _cmd_export(args: argparse.Namespace) -> dict:
    from components import export

    params = _params(args)
    return export.run(
        checkpoint=args.checkpoint,
        out=args.out,
        fp16=not args.no_fp16,
        tracking=not args.no_tracking,
        tracking_uri=args.tracking_uri,
        registration=args.registration,
        experiment=params.tracking.experiment,
        orchestrator=args.orchestrator,
    )


def _cmd_edit(args: argparse.Namespace) -> dict:
    from components import edit

    return edit.run(
        checkpoint=args.checkpoint,
        labels=args.labels,
        instances=args.instances,
        out=args.out,
        edits=args.edits,
        samples=args.samples,
        seed=args.seed,
        engine=args.engine,
    )


def _pipeline_settings(args: argparse.Namespace):
    from pipelines.dag import ClusterSettings

    kwargs = {
        k: getattr(args, k)
        for k in ("image", "gpu_image", "gpus", "s3_secret", "s3_endpoint", "mlflow_uri")
        if getattr(args, k, None) is not None
    }
    kwargs.update(num_nodes=args.nodes, engine=args.engine, namespace=args.namespace)
    return ClusterSettings(**kwargs)


def _pipeline_arguments(items: list[str] | None) -> dict:
    import yaml

    from model.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--arg {item!r}: expected NAME=VALUE, e.g. --arg niter_global=10")
        name, text = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(text) if text else ""
    return out


def _cmd_pipeline(args: argparse.Namespace) -> dict:
    from pipelines import dag

    params = args.params or dag.ROOT / "params.yaml"
    if not Path(params).is_file():
        from model.errors import ConfigError

        raise ConfigError(f"{params}: no such params file")
    if args.pipeline_command == "compile":
        path = dag.compile_pipeline(params, args.out, _pipeline_settings(args))
        return {"compiled": str(path)}
    arguments = _pipeline_arguments(args.arg)
    if args.pipeline_command == "run":
        return dag.run_local(params, args.pipeline_root.resolve(), arguments)
    return dag.submit(
        args.host,
        params,
        arguments,
        experiment=args.experiment,
        run_name=args.run_name,
        settings=_pipeline_settings(args),
        namespace=args.kfp_namespace,
    )


def _add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the working directory)",
    )


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--params",
        type=_location,
        default=None,
        help="params.yaml (default: the built-in paper defaults)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one value, e.g. --set train_global.niter=10 (repeatable)",
    )


def _cmd_synth(args: argparse.Namespace) -> dict:
    from components import synth

    width, height = args.size
    return synth.run(
        out=args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        width=width,
        height=height,
        seed=args.seed,
    )


def _cmd_validate(args: argparse.Namespace) -> dict:
    from components import validate
    from components.params import stage_model_config

    cfg = stage_model_config(_params(args), "local")
    return validate.run(
        data=args.data,
        out=args.out,
        layout=args.layout,
        label_nc=args.label_nc if args.label_nc is not None else cfg.label_nc,
        use_instance_map=cfg.use_instance_map and not args.no_instance_map,
        size_multiple=args.size_multiple or cfg.generator.size_multiple,
    )


def _cmd_boundaries(args: argparse.Namespace) -> dict:
    from components import boundaries

    return boundaries.run(data=args.data, out=args.out, layout=args.layout, workers=args.workers)


def _location(text: str) -> Path | str:
    """A local path, or an ``s3://`` URI kept as text (staged by ``components.storage``)."""
    return text if text.startswith("s3://") else Path(text)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT like 256x128, got {text!r}"
        ) from None
    return w, h


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pix2pixhd",
        description="pix2pixHD (Wang et al., CVPR 2018): semantic label maps to "
        "high-resolution photos, as a reproducible pipeline.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "import-checkpoint",
        help="convert official pix2pixHD checkpoints (latest_net_G.pth ...) to this format",
        description="Read official pix2pixHD checkpoints, infer the architecture from tensor "
        "shapes, load them strictly and write one checkpoint of this project's format.",
    )
    p.add_argument("--generator", type=_location, required=True, help="latest_net_G.pth")
    p.add_argument(
        "--encoder", type=_location, help="latest_net_E.pth (models with instance features)"
    )
    p.add_argument("--discriminator", type=_location, help="latest_net_D.pth (to resume training)")
    p.add_argument(
        "--label-nc",
        type=int,
        default=35,
        help="number of label ids, 0 for RGB labels (default: 35, Cityscapes)",
    )
    p.add_argument(
        "--no-instance-map",
        action="store_true",
        help="the model was trained without instance boundary maps",
    )
    p.add_argument("--out", type=_location, required=True, help="checkpoint file to write")
    p.set_defaults(func=_cmd_import_checkpoint)

    p = sub.add_parser(
        "generate",
        help="label maps to photos with a checkpoint",
        description="Generate one PNG per label map (same stem, native size).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=_location, help="a checkpoint")
    src.add_argument("--onnx", type=_location, help="an exported model (runs in onnxruntime)")
    _add_engine_arg(p)
    p.add_argument("--labels", type=_location, required=True, help="directory of label-id PNGs")
    p.add_argument("--instances", type=_location, help="directory of instance-id PNGs")
    p.add_argument(
        "--images", type=_location, help="directory of photos to encode instance features from"
    )
    p.add_argument("--out", type=_location, required=True, help="output directory")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--seed", type=int, default=0, help="cluster-centre draws (feature models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "train",
        help="train one stage (global, then local)",
        description="Train the global generator (stage global, at 1/2**n_local_enhancers of "
        "the data size) or the local generator initialised from it (stage local). Under "
        "torchrun it trains data-parallel.",
    )
    p.add_argument("--stage", choices=["global", "local"], required=True)
    _add_params_args(p)
    p.add_argument("--data", type=_location, required=True, help="dataset root")
    p.add_argument("--out", type=_location, required=True, help="output directory (latest.pth ...)")
    p.add_argument("--init", type=_location, help="global stage checkpoint (stage local)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest.pth")
    p.add_argument("--boundaries", type=_location, help="precomputed boundary maps (optional)")
    p.add_argument("--data-summary", type=_location, help="validate's summary.json (dataset hash)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--tracking-uri",
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the working directory)",
    )
    p.add_argument("--orchestrator", choices=["cli", "dvc", "kfp"], default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "features",
        help="cluster instance features into the checkpoint",
        description="Encode every training instance with E, cluster per class (k-means) and "
        "write OUT/model.pth with the cluster centres.",
    )
    p.add_argument("--checkpoint", type=_location, required=True)
    p.add_argument("--data", type=_location, required=True)
    p.add_argument("--out", type=_location, required=True)
    _add_params_args(p)
    p.set_defaults(func=_cmd_features)

    seg = sub.add_parser("segmenter", help="the frozen segmenter used by evaluate")
    seg_sub = seg.add_subparsers(
        dest="segmenter_command", metavar="SEGMENTER_COMMAND", required=True
    )
    p = seg_sub.add_parser(
        "train",
        help="train a PSPNet on the real photos (or load published weights)",
        description="Train the segmenter on the dataset's real photos (segmenter.weights "
        "set: load that published PSPNet instead), freeze it, and score it on the val "
        "photos (the oracle row).",
    )
    p.add_argument("--data", type=_location, required=True)
    p.add_argument("--out", type=_location, required=True)
    _add_params_args(p)
    p.set_defaults(func=_cmd_segmenter, command="segmenter train")

    p = sub.add_parser(
        "evaluate",
        help="score generated val images with the frozen segmenter",
        description="Generate the val split, segment generated and real photos, write "
        "pixel accuracy / mean IoU and per-class IoU, register the generator in MLflow.",
    )
    p.add_argument("--checkpoint", type=_location, required=True)
    p.add_argument("--segmenter", type=_location, required=True)
    p.add_argument("--data", type=_location, required=True)
    p.add_argument("--out", type=_location, required=True)
    p.add_argument("--data-summary", type=_location, help="validate's summary.json (dataset hash)")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow run, no registration")
    p.add_argument("--orchestrator", choices=["cli", "dvc", "kfp"], default=None)
    _add_tracking_args(p)
    _add_params_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "promote",
        help="move the 'champion' alias to a version if it beats the champion",
        description="Gate a registered generator version on its metric: it becomes the "
        "champion only if it beats the current one by promote.min_delta (the first model "
        "always does); otherwise the reason is recorded on the version.",
    )
    p.add_argument("--registration", type=_location, help="evaluate's registration.json")
    p.add_argument("--model-name", help="default: evaluate.model_name")
    p.add_argument("--version", help="default: the newest version")
    p.add_argument("--min-delta", type=float, default=None, help="default: promote.min_delta")
    p.add_argument("--out", type=_location, help="write the decision as JSON here")
    _add_tracking_args(p)
    _add_params_args(p)
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser(
        "export",
        help="export the generator to ONNX (label ids in, image out)",
        description="Export the whole generator as one ONNX graph taking raw label ids "
        "(+ instance ids, + features); check it against PyTorch with onnxruntime; write an "
        "fp16 copy for GPU serving; log it to MLflow (onnx flavour).",
    )
    p.add_argument("--checkpoint", type=_location, required=True)
    p.add_argument("--out", type=_location, required=True, help="model.onnx to write")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 copy")
    p.add_argument(
        "--registration",
        type=_location,
        help="evaluate's registration.json: tag that version with the ONNX model",
    )
    p.add_argument("--no-tracking", action="store_true")
    p.add_argument("--orchestrator", choices=["cli", "dvc", "kfp"], default=None)
    _add_tracking_args(p)
    _add_params_args(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "edit",
        help="semantic manipulation: edit a label map and generate the result",
        description="Apply edits (relabel, add, remove, style; format in model/editing.py "
        "and the README) to one label/instance map pair and generate before/after images; "
        "--samples K renders K variations with other cluster centres.",
    )
    p.add_argument("--checkpoint", type=_location, required=True)
    p.add_argument("--labels", type=_location, required=True, help="one label-id PNG")
    p.add_argument("--instances", type=_location, required=True, help="its instance-id PNG")
    p.add_argument("--edits", type=_location, help="EDITS.json (none: just render / sample)")
    p.add_argument("--out", type=_location, required=True)
    p.add_argument("--samples", type=int, default=0, help="variations to render (K)")
    p.add_argument("--seed", type=int, default=0)
    _add_engine_arg(p)
    p.set_defaults(func=_cmd_edit)

    pipe = sub.add_parser(
        "pipeline",
        help="the Kubeflow pipeline: compile, run locally, submit",
        description="The same steps as one kfp v2 DAG. compile writes the IR YAML; run "
        "executes the whole DAG here with kfp.local; submit sends it to a Kubeflow "
        "Pipelines endpoint. Pipeline parameters: --arg NAME=VALUE (dataset_uri, "
        "num_train, num_val, width, height, ngf, niter_global, niter_decay_global, "
        "niter_local, niter_decay_local, min_delta, segmenter_weights, tracking_uri, "
        "overrides=[section.key=value, ...]).",
    )
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    compile_p = pipe_sub.add_parser(
        "compile",
        help="write the pipeline IR YAML",
        description="Write the kfp v2 IR YAML (two documents: the pipeline and its "
        "kfp-kubernetes settings) for upload to Kubeflow Pipelines.",
    )
    compile_p.add_argument(
        "--out", type=Path, default=Path("pipeline.yaml"), help="default: pipeline.yaml"
    )
    run_p = pipe_sub.add_parser("run", help="run the whole DAG on this machine (kfp.local)")
    run_p.add_argument("--local", action="store_true", required=True, help="(required)")
    run_p.add_argument(
        "--pipeline-root", type=Path, default=Path("data/kfp"), help="where artifacts go"
    )
    submit_p = pipe_sub.add_parser("submit", help="submit a run to Kubeflow Pipelines")
    submit_p.add_argument("--host", required=True, help="KFP API endpoint URL")
    submit_p.add_argument("--experiment", default="pix2pixhd")
    submit_p.add_argument("--run-name", default=None)
    submit_p.add_argument("--kfp-namespace", default=None, help="multi-user: profile namespace")
    for q in (compile_p, run_p, submit_p):
        q.add_argument("--params", type=Path, default=None, help="default: the repo's params.yaml")
        q.set_defaults(func=_cmd_pipeline, command=f"pipeline {q.prog.split()[-1]}")
    for q in (run_p, submit_p):
        q.add_argument("--arg", action="append", metavar="NAME=VALUE", help="pipeline parameter")
    for q in (compile_p, submit_p):
        q.add_argument("--image", help="image of the CPU steps (default: pix2pixhd-cpu:latest)")
        q.add_argument(
            "--gpu-image", help="image of the training steps (default: pix2pixhd-cuda:latest)"
        )
        q.add_argument("--gpus", type=_positive_int, help="GPUs per training pod / node (1)")
        q.add_argument(
            "--nodes",
            type=_positive_int,
            default=1,
            help="training nodes; > 1 runs each training stage as a Kubeflow Trainer job (1)",
        )
        q.add_argument(
            "--engine",
            choices=["trainjob", "pytorchjob"],
            default="trainjob",
            help="multi-node engine: Trainer v2 TrainJob or Training Operator v1 PyTorchJob",
        )
        q.add_argument("--namespace", default="kubeflow", help="where training jobs run")
        q.add_argument(
            "--s3-secret",
            help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (pix2pixhd-s3)",
        )
        q.add_argument("--s3-endpoint", help="AWS_ENDPOINT_URL for every task (none: AWS)")
        q.add_argument("--mlflow-uri", help="MLFLOW_TRACKING_URI for every task")

    data = sub.add_parser("data", help="dataset tools (synth)")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser(
        "synth",
        help="render the bundled street-scene dataset (Cityscapes layout)",
        description="Render procedural street scenes with Cityscapes label and instance ids.",
    )
    p.add_argument("--out", type=_location, required=True)
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=40)
    p.add_argument("--size", type=_size, default=(256, 128), help="WIDTHxHEIGHT (default 256x128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth, command="data synth")

    layouts = ["auto", "cityscapes", "folder", "rgb"]
    p = sub.add_parser(
        "validate",
        help="check a dataset with a Great Expectations suite",
        description="Build a per-sample manifest and validate it; on failure write a report "
        "naming each bad file and exit non-zero; on success write summary.json.",
    )
    p.add_argument("--data", type=_location, required=True)
    p.add_argument("--layout", choices=layouts, default="auto")
    p.add_argument("--label-nc", type=int, default=None, help="default: data.label_nc")
    p.add_argument("--no-instance-map", action="store_true")
    p.add_argument(
        "--size-multiple",
        type=_positive_int,
        default=None,
        help="default: the configured model's, 2**(n_downsample_global + n_local_enhancers)",
    )
    _add_params_args(p)
    p.add_argument("--out", type=_location, required=True, help="report directory")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "boundaries",
        help="precompute instance boundary maps",
        description="Write one boundary PNG per instance map (idempotent, parallel).",
    )
    p.add_argument("--data", type=_location, required=True)
    p.add_argument("--layout", choices=layouts, default="auto")
    p.add_argument("--out", type=_location, required=True)
    p.add_argument("--workers", type=_positive_int, default=None)
    p.set_defaults(func=_cmd_boundaries)
    return parser


@contextlib.contextmanager
def _staged(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
    """Arguments with ``s3://`` values replaced by local copies (inputs, fetched first)
    or temporary paths (``--out``, published after the step succeeds)."""
    uris = {k: v for k, v in vars(args).items() if isinstance(v, str) and v.startswith("s3://")}
    if not uris:
        yield args
        return
    from components import storage

    with tempfile.TemporaryDirectory(prefix="pix2pixhd-out-") as tmp:
        local = argparse.Namespace(**vars(args))
        fetched: dict[str, Path] = {}  # --labels and --instances often name one prefix
        for name, uri in uris.items():
            if name != "out":
                if uri not in fetched:
                    fetched[uri] = storage.fetch(uri)
                setattr(local, name, fetched[uri])
        out_uri = uris.get("out")
        if out_uri is not None:
            leaf = storage.S3Uri.parse(out_uri).key.rstrip("/").rsplit("/", 1)[-1] or "out"
            local.out = Path(tmp) / "out" / leaf
            local.out.parent.mkdir()
        yield local
        if out_uri is None or int(os.environ.get("RANK", "0")) != 0:
            return  # nothing to publish; in distributed training rank 0 publishes
        if local.out.is_file():  # a file output and what the step wrote beside it
            storage.upload(local.out.parent, out_uri.rstrip("/").rsplit("/", 1)[0])
        else:  # a directory output: its tree under the prefix
            storage.upload(local.out, out_uri)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from model.errors import Pix2PixHDError

    func: Callable[[argparse.Namespace], dict] = args.func
    try:
        with _staged(args) as staged:
            result = func(staged)
    except Pix2PixHDError as exc:
        sys.stderr.write(f"pix2pixhd {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"pix2pixhd {args.command}: interrupted\n")
        return 130
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
