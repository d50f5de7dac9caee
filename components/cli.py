"""The `pix2pixhd` command line: one subcommand per pipeline step.

Each subcommand parses its arguments and calls the step's ``run(...)`` in
``components.<step>``; heavy libraries are imported inside the step, not at start-up.
Errors the user can fix print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
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
        labels=args.labels,
        out=args.out,
        instances=args.instances,
        images=args.images,
        batch_size=args.batch_size,
        device=args.device,
    )


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
    p.add_argument("--generator", type=Path, required=True, help="latest_net_G.pth")
    p.add_argument("--encoder", type=Path, help="latest_net_E.pth (models with instance features)")
    p.add_argument("--discriminator", type=Path, help="latest_net_D.pth (to resume training)")
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
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.set_defaults(func=_cmd_import_checkpoint)

    p = sub.add_parser(
        "generate",
        help="label maps to photos with a checkpoint",
        description="Generate one PNG per label map (same stem, native size).",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True, help="directory of label-id PNGs")
    p.add_argument("--instances", type=Path, help="directory of instance-id PNGs")
    p.add_argument(
        "--images", type=Path, help="directory of photos to encode instance features from"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=_cmd_generate)
    return parser


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
        result = func(args)
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
