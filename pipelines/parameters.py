"""The Kubeflow pipeline's typed parameters and the params key each one sets, defined once.

The pipeline function (``pipelines.dag``) takes these names as parameters, with the
compiled params.yaml's values as defaults; every step receives the ones it needs under
the same names and turns them into ``--set`` overrides with :func:`as_overrides`, before
the free-form ``overrides`` list. Torch- and kfp-free: compiling needs only this and
``components.params``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from components.params import Params, params_from_text

#: pipeline parameter -> the params key it sets
PARAM_KEYS: dict[str, str] = {
    "num_train": "data.num_train",
    "num_val": "data.num_val",
    "width": "data.width",
    "height": "data.height",
    "ngf": "model.generator.ngf",
    "niter_global": "train_global.niter",
    "niter_decay_global": "train_global.niter_decay",
    "niter_local": "train_local.niter",
    "niter_decay_local": "train_local.niter_decay",
    "min_delta": "promote.min_delta",
    "segmenter_weights": "segmenter.weights",
}


def _lookup(params: Params, key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return value


def pipeline_defaults(params: Params) -> dict[str, Any]:
    """Each pipeline parameter's value in ``params`` (the compiled defaults)."""
    return {name: _lookup(params, key) for name, key in PARAM_KEYS.items()}


def as_overrides(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> list[str]:
    """``section.key=value`` assignments for pipeline parameter ``values`` (by pipeline
    name), followed by the free-form ``overrides`` (which therefore win)."""
    unknown = sorted(set(values) - set(PARAM_KEYS))
    if unknown:
        raise KeyError(f"not a pipeline parameter: {', '.join(unknown)}")
    sets = [f"{PARAM_KEYS[name]}={json.dumps(value)}" for name, value in values.items()]
    return [*sets, *overrides]


def step_params(
    params_yaml: str, values: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> Params:
    """The params a step runs with: params.yaml text, pipeline parameters, overrides."""
    return params_from_text(params_yaml, as_overrides(values or {}, overrides))
