"""MLflow model registry: register generator versions, promote with a metric gate.

Promotion moves the alias ``champion`` (stages are deprecated in MLflow and not used).
A candidate passes the gate when its metric beats the current champion's by at least
``min_delta`` (the first model always passes); passing versions are tagged
``promotion=passed``. The alias is then set to the best passing version, and re-checked
until it is: two promotions racing both converge on the better model, because each
writer re-reads after its own write and the set of passing versions only grows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from model.errors import Pix2PixHDError

log = logging.getLogger(__name__)

ALIAS = "champion"


class RegistryError(Pix2PixHDError):
    pass


def _client(tracking_uri: str | None) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register_generator(
    name: str,
    run_id: str,
    artifact_path: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    tracking_uri: str | None = None,
) -> str:
    """A new version of ``name`` pointing at the run's ``artifact_path``; metrics and
    lineage become version tags. Returns the version number."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists already
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri}/{artifact_path}"
    all_tags = {
        **{k: str(v) for k, v in tags.items()},
        **{k: repr(float(v)) for k, v in metrics.items()},
        "run_id": run_id,
    }
    mv = client.create_model_version(name, source, run_id=run_id, tags=all_tags)
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def _metric(mv: Any, metric: str) -> float:
    try:
        return float(mv.tags[metric])
    except (KeyError, ValueError):
        raise RegistryError(f"model version {mv.version} has no numeric tag '{metric}'") from None


def promote(
    name: str,
    version: str | None,
    metric: str = "mean_iou",
    min_delta: float = 0.0,
    tracking_uri: str | None = None,
    _before_alias_write: Callable[[], None] | None = None,
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise RegistryError(f"registered model {name!r}: {exc}") from None
    if not versions:
        raise RegistryError(f"registered model {name!r} has no versions: run evaluate first")
    if version is None:
        version = str(max(int(v.version) for v in versions))
    by_version = {str(v.version): v for v in versions}
    if version not in by_version:
        raise RegistryError(
            f"{name} has no version {version} (known: {', '.join(sorted(by_version, key=int))})"
        )
    candidate = _metric(by_version[version], metric)
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        champion = None
    if champion is None:
        passed, reason = True, "first model: promoted"
    else:
        best = _metric(champion, metric)
        passed = candidate >= best + min_delta
        verdict = ">=" if passed else "<"
        reason = (
            f"{metric} {candidate:.4f} {verdict} champion v{champion.version} "
            f"{best:.4f} + min_delta {min_delta}"
        )
    client.set_model_version_tag(name, version, "promotion", "passed" if passed else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    final = None
    if passed:
        final = _converge(client, name, metric, _before_alias_write)
    result = {
        "name": name,
        "version": version,
        metric: candidate,
        "promoted": passed,
        "reason": reason,
        "champion": final or (champion.version if champion else None),
    }
    log.info("promotion of %s v%s: %s", name, version, reason)
    return result


def _best_passing(client: Any, name: str, metric: str) -> Any:
    passing = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("promotion") == "passed"
    ]
    return max(passing, key=lambda v: (_metric(v, metric), int(v.version)))


def _converge(
    client: Any, name: str, metric: str, before_write: Callable[[], None] | None, attempts: int = 10
) -> str:
    from mlflow.exceptions import MlflowException

    for _ in range(attempts):
        best = _best_passing(client, name, metric)
        if before_write is not None:
            before_write()
        client.set_registered_model_alias(name, ALIAS, best.version)
        best_now = _best_passing(client, name, metric)
        try:
            current = client.get_model_version_by_alias(name, ALIAS).version
        except MlflowException:
            current = None
        if str(current) == str(best_now.version):
            return str(current)
    raise RegistryError(f"could not settle alias '{ALIAS}' of {name} (concurrent promotions?)")
