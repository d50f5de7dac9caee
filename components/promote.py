"""Step `promote`: gate a registered generator version and move the `champion` alias
(the gate itself is ``components.registry.promote``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components import registry
from model.errors import InputError


def run(
    name: str,
    version: str | None = None,
    registration: Path | None = None,
    metric: str = "mean_iou",
    min_delta: float = 0.0,
    out: Path | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Promote one version of registered model ``name`` if its ``metric`` beats the
    champion's by more than ``min_delta`` (a tie does not move the alias).

    Args:
        name: the registered model (overridden by ``registration``).
        version: the version to gate; None: the newest (overridden by ``registration``).
        registration: export's registration.json, naming the model and version.
        metric: the version tag compared (written by export from evaluate's scores).
        min_delta: how much the candidate must beat the champion by.
        out: where to write the decision as JSON (optional).
        tracking_uri: MLflow tracking/registry URI (default: MLflow's own default).

    Returns:
        The decision (``promoted``, the reason, the versions compared).
    """
    if registration is not None:
        if not Path(registration).is_file():
            raise InputError(
                f"{registration}: no registration (export registers a version only with "
                "--evaluation and tracking on)"
            )
        reg = json.loads(Path(registration).read_text())
        name, version = reg["name"], str(reg["version"])
    result = registry.promote(name, version, metric, min_delta, tracking_uri)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
