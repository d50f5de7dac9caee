"""Semantic manipulation (the paper's editing): relabel regions or instances, add or
remove objects, and choose an instance's style among its class's cluster centres or
from a feature encoded from a reference photo.

Edits are a JSON document ``{"edits": [...]}``, applied in order:

- ``{"op": "relabel", "instance": 26001, "to": "bus"}``: one instance gets a new label
  (and a fresh instance id of that class when it has instances, else the stuff id);
- ``{"op": "relabel", "from": "road", "to": "terrain"}``: every pixel of a label;
- ``{"op": "add", "mask": "mask.png", "label": "car"}``: paste a mask (non-zero pixels)
  as a new object with a fresh instance id; the mask path is relative to the edits file;
- ``{"op": "remove", "instance": 24002, "fill": "sidewalk"}``: an instance becomes the
  ``fill`` label (default: the most common label around it);
- ``{"op": "style", "instance": 26001, "cluster": 3}``: that instance takes cluster
  centre 3 of its class; or ``{"op": "style", "instance": 26001, "photo": "ref.png",
  "photo_instances": "ref_inst.png", "photo_instance": 26004}`` for the feature encoded
  from a reference photo's instance.

Labels are Cityscapes names or integer ids. Every problem is an InputError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.errors import InputError
from model.labels import LABELS, NAME_TO_ID
from model.model_contract import class_of

_THINGS = {lab.id for lab in LABELS if lab.has_instances}
_KEYS = {
    "relabel": ({"to"}, {"instance", "from"}),
    "add": ({"mask", "label"}, set()),
    "remove": ({"instance"}, {"fill"}),
    "style": ({"instance"}, {"cluster", "photo", "photo_instances", "photo_instance"}),
}


@dataclass
class EditResult:
    label: np.ndarray
    instance: np.ndarray
    cluster_choice: dict[int, int] = field(default_factory=dict)  # instance id -> centre
    feature_override: dict[int, np.ndarray] = field(default_factory=dict)  # id -> feature
    log: list[str] = field(default_factory=list)


def label_id(value: Any, label_nc: int, where: str) -> int:
    if isinstance(value, str):
        if value not in NAME_TO_ID:
            raise InputError(
                f"{where}: unknown label {value!r} (Cityscapes names such as "
                "'road', 'car', 'bus', or integer ids)"
            )
        value = NAME_TO_ID[value]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < label_nc:
        raise InputError(f"{where}: label {value!r} is outside [0, {label_nc - 1}]")
    return value


def _new_instance_ids(instance: np.ndarray, label: int, count: int = 1) -> list[int]:
    """``count`` unused instance ids of ``label``: for a thing class, free ids inside its
    own range [label*1000, label*1000 + 999] (never crossing into the next class's);
    for a stuff class, the label id itself (stuff has no instances)."""
    if label not in _THINGS or label <= 0:
        return [label] * count
    lo = label * 1000
    used = set(np.unique(instance[(instance >= lo) & (instance < lo + 1000)]).tolist())
    free = [i for i in range(lo, lo + 1000) if i not in used][:count]
    if len(free) < count:
        raise InputError(
            f"class {label} has no free instance ids left ({len(used)} of 1000 in use)"
        )
    return free


def _new_instance_id(instance: np.ndarray, label: int) -> int:
    return _new_instance_ids(instance, label)[0]


def _surrounding_label(label: np.ndarray, mask: np.ndarray) -> int:
    ring = np.zeros_like(mask)
    ring[1:] |= mask[:-1]
    ring[:-1] |= mask[1:]
    ring[:, 1:] |= mask[:, :-1]
    ring[:, :-1] |= mask[:, 1:]
    ring &= ~mask
    own = label[mask]
    ring &= ~np.isin(label, np.unique(own))  # not the object's class (a touching neighbour)
    values = label[ring] if ring.any() else label[~mask & ~np.isin(label, np.unique(own))]
    if values.size == 0:
        raise InputError("cannot remove the only object in the map without a 'fill' label")
    return int(np.bincount(values.astype(np.int64)).argmax())


def _instance_mask(instance: np.ndarray, inst_id: Any, where: str) -> np.ndarray:
    if isinstance(inst_id, bool) or not isinstance(inst_id, int):
        raise InputError(f"{where}: instance must be an integer id, got {inst_id!r}")
    mask = instance == inst_id
    if not mask.any():
        present = sorted(int(v) for v in np.unique(instance) if v >= 1000)[:12]
        raise InputError(
            f"{where}: instance id {inst_id} is not in the instance map "
            f"(instances present: {present})"
        )
    return mask


def apply_edits(
    label: np.ndarray,
    instance: np.ndarray,
    edits: Mapping[str, Any],
    label_nc: int,
    load_mask: Any = None,
    centres: Mapping[int, Any] | None = None,
    encode_reference: Any = None,
    check: Any = None,
) -> EditResult:
    """Apply ``edits`` to copies of the maps. ``load_mask(path) -> bool array``;
    ``encode_reference(edit) -> feature vector`` for reference-photo styles;
    ``check()`` is called before each edit (it raises to stop: a deadline, a client gone)."""
    if not isinstance(edits, Mapping) or not isinstance(edits.get("edits"), list):
        raise InputError('edits: expected a JSON object {"edits": [ ... ]}')
    res = EditResult(label.astype(np.int64).copy(), instance.astype(np.int64).copy())
    for i, edit in enumerate(edits["edits"]):
        if check is not None:
            check()
        where = f"edits[{i}]"
        if not isinstance(edit, Mapping) or edit.get("op") not in _KEYS:
            raise InputError(f"{where}: 'op' must be one of {', '.join(_KEYS)}")
        op = edit["op"]
        required, optional = _KEYS[op]
        keys = set(edit) - {"op"}
        if not required <= keys or keys - required - optional:
            raise InputError(
                f"{where}: {op} takes {sorted(required)} "
                f"(+ optional {sorted(optional)}), got {sorted(keys)}"
            )

        def existing(inst_id: Any, where: str = where) -> np.ndarray:
            return _instance_mask(res.instance, inst_id, where)

        if op == "relabel":
            to = label_id(edit["to"], label_nc, where)
            if ("instance" in edit) == ("from" in edit):
                raise InputError(f"{where}: relabel takes either 'instance' or 'from'")
            if "instance" in edit:
                mask = existing(edit["instance"])
            else:
                src = label_id(edit["from"], label_nc, where)
                mask = res.label == src
                if not mask.any():
                    raise InputError(f"{where}: label {edit['from']!r} is not in the label map")
            # each source instance keeps its own (new) id: relabelling all cars to
            # trucks gives as many trucks, not one merged truck
            sources = [int(v) for v in np.unique(res.instance[mask])]
            new_ids = _new_instance_ids(res.instance, to, len(sources))
            before = res.instance.copy()
            for src_id, new_id in zip(sources, new_ids, strict=True):
                res.instance[mask & (before == src_id)] = new_id
            res.label[mask] = to
            shown = new_ids[0] if len(set(new_ids)) == 1 else new_ids
            res.log.append(f"relabel {int(mask.sum())} px -> {to} (instance {shown})")
        elif op == "add":
            lab = label_id(edit["label"], label_nc, where)
            mask = load_mask(edit["mask"])
            if mask.shape != res.label.shape:
                raise InputError(
                    f"{where}: mask {edit['mask']} is {mask.shape[1]}x"
                    f"{mask.shape[0]}, the label map is {res.label.shape[1]}x"
                    f"{res.label.shape[0]}"
                )
            if not mask.any():
                raise InputError(f"{where}: mask {edit['mask']} is empty")
            new_id = _new_instance_id(res.instance, lab)
            res.label[mask], res.instance[mask] = lab, new_id
            res.log.append(f"add {int(mask.sum())} px of {lab} as instance {new_id}")
        elif op == "remove":
            mask = existing(edit["instance"])
            fill = (
                label_id(edit["fill"], label_nc, where)
                if "fill" in edit
                else _surrounding_label(res.label, mask)
            )
            res.label[mask], res.instance[mask] = fill, _new_instance_id(res.instance, fill)
            res.log.append(f"remove instance {edit['instance']} (filled with {fill})")
        else:  # style
            mask = existing(edit["instance"])
            inst_id = int(edit["instance"])
            cls = class_of(inst_id)
            if "cluster" in edit:
                k = edit["cluster"]
                available = 0 if centres is None or cls not in centres else len(centres[cls])
                if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < available:
                    raise InputError(
                        f"{where}: cluster {k!r} is out of range: class {cls} "
                        f"has {available} cluster centres"
                    )
                res.cluster_choice[inst_id] = k
            elif {"photo", "photo_instances", "photo_instance"} <= keys:
                if encode_reference is None:
                    raise InputError(f"{where}: this model has no feature encoder")
                res.feature_override[inst_id] = encode_reference(edit)
            else:
                raise InputError(
                    f"{where}: style takes 'cluster', or 'photo', "
                    "'photo_instances' and 'photo_instance'"
                )
            res.log.append(f"style of instance {inst_id}")
    return res
