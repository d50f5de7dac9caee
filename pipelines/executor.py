"""The body of every Kubeflow component: artifacts to paths, the params from the
compiled params.yaml + the typed pipeline parameters + ``overrides``, then the step's
``run()`` through :func:`components.steps.call` (the function the CLI and DVC use), then
the step's Kubeflow hook. Runs inside the task's container."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from components import steps
from pipelines.hooks import HOOKS, Hook
from pipelines.parameters import PARAM_KEYS, step_params

log = logging.getLogger(__name__)

#: the run() parameters that the pipeline's tracking inputs feed
TRACKING = ("tracking_uri", "orchestrator")


def given_arguments(task: steps.Task, values: dict[str, Any]) -> dict[str, Any]:
    """The task's fixed arguments, its input and output artifacts as paths, and the
    tracking arguments."""
    step = task.spec
    given: dict[str, Any] = dict(task.args)
    for arg, ref in task.inputs.items():
        _, file = steps.split_ref(ref)
        path = Path(values[arg].path)
        given[arg] = path / file if file else path
    out = Path(values["out"].path)
    file = step.writes["out"].file
    if file:
        out.mkdir(parents=True, exist_ok=True)
    given["out"] = out / file if file else out
    names = {p.name for p in step.parameters()}
    if "tracking_uri" in names:
        given["tracking_uri"] = values["tracking_uri"] or None
    if "orchestrator" in names:
        given["orchestrator"] = "kfp"
    return given


def execute(task_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Run task ``task_name`` with the component's arguments ``values`` (its locals())."""
    from components.tracking import configure_client

    configure_client()
    task = steps.TASK_BY_NAME[task_name]
    step = task.spec
    if values.get("pipeline_run"):
        os.environ["PIX2PIXHD_PIPELINE_RUN"] = values["pipeline_run"]  # the runs' shared tag
    typed = {k: values[k] for k in PARAM_KEYS if k in values}
    params = step_params(values["params_yaml"], typed, values["overrides"])
    given = given_arguments(task, values)
    hook = HOOKS.get(step.name, Hook())

    def call() -> dict[str, Any]:
        return steps.call(step, params, given)

    result = hook.run(values, call, (task, params, given)) if hook.run else call()
    if hook.after:
        out = Path(values["out"].path)
        hook.after(values, result, out)
    return result
