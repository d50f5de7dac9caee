"""MLflow model registry: register generator versions, promote with a metric gate.

Promotion moves the alias ``champion`` (stages are deprecated in MLflow and not used).
A candidate passes the gate when its metric beats the current champion's by more than
``min_delta`` (a tie does not move the alias; the first model always passes); passing
versions are tagged ``promotion=passed``. The alias is then set to the best passing
version, and re-checked until it is: promotions racing each other converge on the best
model, because each writer re-reads after its own write and the set of passing
versions only grows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.errors import InputError, Pix2PixHDError
from model.fileio import read_json

log = logging.getLogger(__name__)

ALIAS = "champion"
MODEL_DESCRIPTION = (
    "pix2pixHD generators (label map -> street photo), one version per exported "
    "checkpoint: the ONNX graph served by ONNX Runtime through a pyfunc wrapper, with "
    "its evaluation scores as tags and in the version's description; the checkpoint is "
    "linked (tag checkpoint_uri), not part of the version. Alias 'champion': the "
    "version that passed the promotion gate (metric tag mean_iou by default)."
)


class RegistryError(Pix2PixHDError):
    pass


def read_registration(path: str | Path, allow_unregistered: bool = False) -> tuple[str, str]:
    """(model name, version) from evaluate's registration.json; a malformed file, or
    one that records a failed registration, is an error naming the file (with
    ``allow_unregistered``, the latter gives ``None``)."""
    reg = read_json(path, "registration file")
    if not isinstance(reg, dict):
        raise InputError(f"{path}: registration file must be a JSON object")
    if reg.get("registered") is False and allow_unregistered:
        return None  # type: ignore[return-value]
    if reg.get("registered") is False:
        raise InputError(
            f"{path}: the model was not registered ({reg.get('reason', 'no reason given')}): "
            "nothing to promote; run evaluate again with tracking available"
        )
    name, version = reg.get("name"), reg.get("version")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: registration file has no model 'name'")
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise InputError(f"{path}: registration file has no 'version'")
    if not str(version).isdigit():
        raise InputError(f"{path}: registration 'version' {version!r} is not a version number")
    return name, str(version)


def _client(tracking_uri: str | None) -> Any:
    import mlflow

    from components.tracking import configure_client

    configure_client()

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register_generator(
    name: str,
    run_id: str,
    source: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    tracking_uri: str | None = None,
    model_id: str | None = None,
    description: str | None = None,
) -> str:
    """A new version of ``name`` from ``source`` (a logged model's URI, or an artifact
    path of the run); metrics and lineage become version tags, ``description`` the
    version's description. Returns the version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException:
        pass  # exists already
    if "://" not in source and not source.startswith("models:/"):
        source = f"{client.get_run(run_id).info.artifact_uri}/{source}"
    all_tags = {
        **{k: str(v) for k, v in tags.items()},
        **{k: repr(float(v)) for k, v in metrics.items()},
        "run_id": run_id,
    }
    mv = client.create_model_version(
        name, source, run_id=run_id, tags=all_tags, model_id=model_id, description=description
    )
    log.info("registered %s version %s", name, mv.version)
    return str(mv.version)


def find_version(
    name: str, checkpoint_sha256: str, serving_format: str, tracking_uri: str | None = None
) -> str | None:
    """The newest version of ``name`` that already serves this checkpoint, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client(tracking_uri).search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [
        int(v.version)
        for v in versions
        if v.tags.get("checkpoint_sha256") == checkpoint_sha256
        and v.tags.get("serving_format") == serving_format
    ]
    return str(max(same)) if same else None


def version_model_id(name: str, version: str, tracking_uri: str | None = None) -> str | None:
    """The logged model (MLflow 3) behind a registered version, if it has one."""
    mv = _client(tracking_uri).get_model_version(name, version)
    model_id = getattr(mv, "model_id", None)
    source = str(mv.source or "")
    if not model_id and source.startswith("models:/m-"):  # SQL stores keep only the source
        model_id = source[len("models:/") :].split("/")[0]
    return model_id or None


def _metric(mv: Any, metric: str) -> float:
    try:
        return float(mv.tags[metric])
    except (KeyError, ValueError):
        raise RegistryError(f"model version {mv.version} has no numeric tag '{metric}'") from None


def _finite_metric(mv: Any, metric: str) -> float | None:
    """The version's metric, or None when it is missing or not finite (NaN, Inf): such
    a version can neither be promoted nor block another."""
    try:
        value = float(mv.tags[metric])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def promote(
    name: str,
    version: str | None,
    metric: str = "mean_iou",
    min_delta: float = 0.0,
    tracking_uri: str | None = None,
    _before_alias_write: Callable[[], None] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    margin: float = 0.0,
) -> dict[str, Any]:
    """Gate ``version`` of ``name`` against the champion (see ``components.promote``):
    the candidate moves the alias only when it is better beyond the uncertainty, by the
    paired bootstrap interval of the score difference on the same val images (each
    version's evaluate run logged its per-image confusion matrices), or, where the two
    were scored on other images, when their intervals do not overlap."""
    from mlflow.exceptions import MlflowException

    from components.tracking import probe, resolve_uri

    reason = probe(resolve_uri(tracking_uri))  # one short check, not minutes of retries
    if reason is not None:
        raise RegistryError(f"cannot reach the model registry: {reason}")
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
    if not math.isfinite(min_delta) or min_delta < 0:
        raise InputError(f"--min-delta {min_delta}: expected a finite number >= 0")
    _metric(by_version[version], metric)  # a missing tag is an error
    candidate = _finite_metric(by_version[version], metric)
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        champion = None
    best = _finite_metric(champion, metric) if champion is not None else None
    comparison: dict[str, Any] = {}
    if candidate is None:
        passed = False
        reason = (
            f"{metric} is {by_version[version].tags.get(metric)}: a non-finite score is "
            "never promoted"
        )
    elif champion is None:
        passed, reason = True, f"first model: promoted (min_delta {min_delta} not applied)"
    elif str(champion.version) == version:
        passed, reason = False, "already the champion"
    elif best is None:
        passed = True
        reason = (
            f"{metric} {candidate:.4f}; champion v{champion.version} has a non-finite "
            f"{metric} ({champion.tags.get(metric)}): replaced (min_delta {min_delta} not "
            "applied)"
        )
    else:
        gate = compare(
            client,
            by_version[version],
            champion,
            metric,
            min_delta,
            confidence,
            resamples,
            margin,
        )
        passed, reason = gate.pop("passed"), gate.pop("reason")
        comparison = gate
    if reason != "already the champion":  # its passed tag stays
        client.set_model_version_tag(name, version, "promotion", "passed" if passed else "rejected")
        client.set_model_version_tag(name, version, "promotion_reason", reason)
    final = None
    if passed:
        final = _converge(client, name, metric, _before_alias_write)
    champion_now = final or (champion.version if champion else None)
    result = {
        "name": name,
        "version": version,
        metric: candidate,
        "min_delta": min_delta,
        "champion_before": str(champion.version) if champion else None,
        "champion_score_before": best,
        "promoted": passed,
        "reason": reason,
        "champion": str(champion_now) if champion_now is not None else None,  # always text
        "comparison": comparison,
    }
    log.info("promotion of %s v%s: %s", name, version, reason)
    return result


PER_IMAGE = "per_image_confusion.npz"  # what evaluate logs (components.evaluate.PER_IMAGE)


def _per_image(client: Any, mv: Any) -> Any:
    """(stems, generated per-image confusion matrices) that the version's evaluate run
    logged, or None (an older version, a run without the file, a store that fails)."""
    import numpy as np

    run_id = mv.tags.get("evaluate_run_id")
    if not run_id:
        return None
    try:
        local = client.download_artifacts(run_id, PER_IMAGE)
        with np.load(local) as f:
            return list(f["stems"]), f["generated"]
    except Exception as exc:  # absent or unreadable: the unpaired rule applies
        log.info("version %s: no per-image scores (%s)", mv.version, str(exc)[:120])
        return None


def _interval(mv: Any, metric: str) -> tuple[float, float] | None:
    try:
        lo = float(mv.tags[f"generated_{metric}_ci_low"])
        hi = float(mv.tags[f"generated_{metric}_ci_high"])
    except (KeyError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def compare(
    client: Any,
    candidate: Any,
    champion: Any,
    metric: str,
    min_delta: float,
    confidence: float,
    resamples: int,
    margin: float = 0.0,
) -> dict[str, Any]:
    """The gate's decision for two finite scores: ``passed``, ``reason`` and the numbers
    (the difference, its interval, how it was tested). The candidate must clear
    ``min_delta + margin`` (``margin``: the training-seed spread)."""
    from model.metrics import paired_difference

    cand, best = _finite_metric(candidate, metric), _finite_metric(champion, metric)
    ours = f"{metric} {cand:.4f} vs champion v{champion.version} {best:.4f}"
    a = _per_image(client, candidate) if metric == "mean_iou" else None
    b = _per_image(client, champion) if a is not None else None
    if a is not None and b is not None and sorted(a[0]) == sorted(b[0]):
        order = {stem: i for i, stem in enumerate(b[0])}
        champ = b[1][[order[stem] for stem in a[0]]]  # the same images, in one order
        d = paired_difference(a[1], champ, resamples, seed=0, level=confidence)
        bar = min_delta + margin
        passed = d["low"] > bar
        reason = (
            f"{ours}: difference {d['difference']:+.4f}, {confidence:.0%} paired interval "
            f"[{d['low']:+.4f}, {d['high']:+.4f}] on the same {len(a[0])} val images, "
            f"{'above' if passed else 'not above'} min_delta {min_delta} + seed margin "
            f"{margin}"
        )
        return {
            "passed": passed,
            "reason": reason,
            "test": "paired bootstrap",
            "difference": d["difference"],
            "interval": [d["low"], d["high"]],
            "confidence": confidence,
            "images": len(a[0]),
            "seed_margin": margin,
        }
    ci_c, ci_b = _interval(candidate, metric), _interval(champion, metric)
    if ci_c is not None and ci_b is not None:  # scored on other images: no overlap needed
        passed = ci_c[0] > ci_b[1] + min_delta + margin
        reason = (
            f"{ours}: not scored on the same images, so the intervals must not overlap: "
            f"candidate [{ci_c[0]:.4f}, {ci_c[1]:.4f}], champion [{ci_b[0]:.4f}, "
            f"{ci_b[1]:.4f}] + min_delta {min_delta}: {'apart' if passed else 'overlapping'}"
        )
        return {
            "passed": passed,
            "reason": reason,
            "test": "non-overlapping intervals",
            "difference": cand - best,
            "interval": None,
            "candidate_interval": list(ci_c),
            "champion_interval": list(ci_b),
        }
    passed = cand > best + min_delta + margin  # no uncertainty recorded (older versions)
    reason = (
        f"{ours}: no intervals recorded for both, point comparison: "
        f"{'>' if passed else '<='} champion + min_delta {min_delta}"
    )
    return {"passed": passed, "reason": reason, "test": "point", "difference": cand - best}


def _best_passing(client: Any, name: str, metric: str) -> Any:
    passing = [
        v
        for v in client.search_model_versions(f"name='{name}'")
        if v.tags.get("promotion") == "passed" and _finite_metric(v, metric) is not None
    ]
    # equal scores: the earlier version keeps the alias (a tie does not move it)
    return max(passing, key=lambda v: (_finite_metric(v, metric), -int(v.version)))


def _converge(
    client: Any, name: str, metric: str, before_write: Callable[[], None] | None, attempts: int = 10
) -> str:
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        best = _best_passing(client, name, metric)
        if before_write is not None:
            before_write()
        try:
            client.set_registered_model_alias(name, ALIAS, best.version)
        except MlflowException as exc:
            # MLflow's SQL store reads, then inserts the alias row: two writers racing on
            # PostgreSQL get a unique violation. Another write won; re-read and retry.
            log.info("alias write of %s v%s lost a race (%s); retrying", name, best.version, exc)
            time.sleep(0.05 * (attempt + 1))
            continue
        best_now = _best_passing(client, name, metric)
        try:
            current = client.get_model_version_by_alias(name, ALIAS).version
        except MlflowException:
            current = None
        if str(current) == str(best_now.version):
            return str(current)
    raise RegistryError(f"could not settle alias '{ALIAS}' of {name} (concurrent promotions?)")
