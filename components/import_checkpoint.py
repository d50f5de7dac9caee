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
