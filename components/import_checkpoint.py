"""Step `import-checkpoint`: official pix2pixHD files -> this project's checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model.checkpoint import config_of, import_official, save_checkpoint
from model.config import to_dict
from model.fileio import prepare_out_file

log = logging.getLogger(__name__)


def run(
    generator: Path,
    out: Path,
    label_nc: int = 35,
    use_instance_map: bool = True,
    encoder: Path | None = None,
    discriminator: Path | None = None,
) -> dict[str, Any]:
    """Convert official pix2pixHD checkpoints (latest_net_G.pth ...) to this format.

    Convert official pix2pixHD files to one checkpoint of this project's format (the
    architecture inferred from tensor shapes, weights loaded strictly).

    Args:
        generator: ``latest_net_G.pth``.
        out: the checkpoint to write.
        label_nc: label ids the model was trained with (0: RGB labels).
        use_instance_map: the model was trained with instance boundary maps.
        encoder: ``latest_net_E.pth`` (models with instance features).
        discriminator: ``latest_net_D.pth`` (to resume training).
    """
    prepare_out_file(out)
    payload = import_official(generator, label_nc, use_instance_map, encoder, discriminator)
    save_checkpoint(out, payload)
    cfg = config_of(payload)
    g = cfg.generator
    summary = {
        "out": str(out),
        "generator": "global" if g.n_local_enhancers == 0 else "local",
        "config": to_dict(cfg),
        "has_discriminator": payload["D"] is not None,
        "has_encoder": payload["E"] is not None,
    }
    log.info(
        "wrote %s (%s generator, ngf %d, %d downsamplings, %d blocks, %d enhancers)",
        out,
        summary["generator"],
        g.ngf,
        g.n_downsample_global,
        g.n_blocks_global,
        g.n_local_enhancers,
    )
    return summary
