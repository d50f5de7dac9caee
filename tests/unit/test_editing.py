import numpy as np
import pytest

from model.editing import apply_edits
from model.errors import InputError

# road (7) with two touching cars (26000, 26001) and a person (24000) on sidewalk (8)
LABEL = np.array(
    [
        [7, 7, 26, 26, 26, 26],
        [7, 7, 26, 26, 26, 26],
        [8, 8, 24, 8, 7, 7],
    ]
)
INST = np.array(
    [
        [7, 7, 26000, 26000, 26001, 26001],
        [7, 7, 26000, 26000, 26001, 26001],
        [8, 8, 24000, 8, 7, 7],
    ]
)
CENTRES = {26: np.zeros((3, 3)), 24: np.zeros((1, 3))}


def edit(*edits, **kw):
    return apply_edits(LABEL, INST, {"edits": list(edits)}, 35, centres=CENTRES, **kw)


def test_relabel_instance_gets_a_fresh_id_of_its_new_class():
    r = edit({"op": "relabel", "instance": 26001, "to": "bus"})
    assert (r.label[:2, 4:] == 28).all() and (r.instance[:2, 4:] == 28000).all()
    assert (r.instance[:2, 2:4] == 26000).all()  # the other car is untouched
    r = edit(
        {"op": "relabel", "instance": 26001, "to": "bus"},
        {"op": "relabel", "instance": 26000, "to": 28},
    )
    assert set(np.unique(r.instance[:2, 2:])) == {28000, 28001}


def test_relabel_region_and_remove_and_add():
    r = edit({"op": "relabel", "from": "road", "to": "terrain"})
    assert (r.label[LABEL == 7] == 22).all() and (r.instance[LABEL == 7] == 22).all()
    r = edit({"op": "remove", "instance": 24000})
    assert r.label[2, 2] == 8 and r.instance[2, 2] == 8  # filled with its surroundings
    r = edit({"op": "add", "mask": "m.png", "label": "car"}, load_mask=lambda path: LABEL == 8)
    assert (r.label[LABEL == 8] == 26).all() and (r.instance[LABEL == 8] == 26002).all()


def test_remove_fills_with_the_surroundings_not_a_touching_neighbour_of_its_class():
    # a person (24001) in a group: 3 of its 4 neighbours are another person, 1 is sidewalk
    label = np.array([[8, 8, 8], [24, 24, 24], [24, 24, 24]])
    inst = np.array([[8, 8, 8], [24000, 24001, 24000], [24000, 24000, 24000]])
    r = apply_edits(label, inst, {"edits": [{"op": "remove", "instance": 24001}]}, 35)
    assert r.label[1, 1] == 8 and r.instance[1, 1] == 8


def test_style_choice_recorded():
    r = edit({"op": "style", "instance": 26001, "cluster": 2})
    assert r.cluster_choice == {26001: 2}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"op": "relabel", "instance": 26001, "to": "spaceship"}, "unknown label 'spaceship'"),
        ({"op": "relabel", "instance": 26001, "to": 40}, "label 40 is outside"),
        ({"op": "relabel", "instance": 26009, "to": "bus"}, "instance id 26009 is not in the"),
        ({"op": "style", "instance": 26001, "cluster": 3}, "cluster 3 is out of range: class 26"),
        ({"op": "paint"}, "'op' must be one of"),
        ({"op": "remove", "instance": 24000, "colour": "red"}, "remove takes"),
    ],
)
def test_bad_edits_are_named(bad, message):
    with pytest.raises(InputError, match=message) as err:
        edit({"op": "relabel", "from": "sidewalk", "to": "sidewalk"}, bad)
    assert "edits[1]" in str(err.value)


def test_mask_of_the_wrong_size():
    with pytest.raises(InputError, match="mask m.png is 2x2"):
        edit(
            {"op": "add", "mask": "m.png", "label": "car"},
            load_mask=lambda path: np.ones((2, 2), bool),
        )


def test_style_from_a_reference_photo_uses_the_encoded_feature():
    photo = {"op": "style", "instance": 26000, "photo": "p.png"}
    photo.update(photo_instances="pi.png", photo_instance=26004)
    seen = []

    def encode(edit):
        seen.append(edit["photo_instance"])
        return np.array([0.1, 0.2, 0.3])

    r = edit(photo, encode_reference=encode)
    assert seen == [26004] and np.array_equal(r.feature_override[26000], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="this model has no feature encoder"):
        edit(photo)
