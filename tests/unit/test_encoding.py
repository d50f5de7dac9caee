import pytest
import torch

from model.encoding import boundary_map, check_size, encode_label, one_hot
from model.errors import InputError


def test_boundary_map_touching_same_class_instances():
    # Two cars (26001, 26002) touching side by side, on road (7): the boundary between the
    # two cars must be marked on both sides even though their class is the same.
    inst = torch.tensor(
        [
            [7, 7, 7, 7, 7, 7],
            [7, 26001, 26001, 26002, 26002, 7],
            [7, 26001, 26001, 26002, 26002, 7],
            [7, 7, 7, 7, 7, 7],
        ]
    ).view(1, 1, 4, 6)
    expected = torch.tensor(
        [
            [0, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 0],
        ],
        dtype=torch.float32,
    ).view(1, 1, 4, 6)
    assert torch.equal(boundary_map(inst), expected)


def test_boundary_map_interior_pixels_are_zero():
    inst = torch.full((1, 1, 5, 5), 24001)
    inst[..., :, 3:] = 24002
    edge = boundary_map(inst)[0, 0]
    assert edge[:, 2].eq(1).all() and edge[:, 3].eq(1).all()
    assert edge[:, :2].eq(0).all() and edge[:, 4].eq(0).all()


def test_boundary_map_keeps_32bit_ids_distinct():
    # 33001 and 33001 + 65536 would collide after a 16-bit wrap.
    inst = torch.tensor([[33001, 33001 + 65536]]).view(1, 1, 1, 2)
    assert boundary_map(inst).sum() == 2


def test_one_hot_and_channel_order():
    label = torch.tensor([[0, 2], [1, 2]]).view(1, 1, 2, 2)
    inst = torch.tensor([[5, 5], [5, 6]]).view(1, 1, 2, 2)
    enc = encode_label(label, inst, label_nc=3, use_instance_map=True)
    assert enc.shape == (1, 4, 2, 2)
    assert torch.equal(enc[0, :3], one_hot(label, 3)[0])
    assert enc[0, 0, 0, 0] == 1 and enc[0, 2, 0, 1] == 1 and enc[0, 1, 1, 0] == 1
    assert enc[0, :3].sum(0).eq(1).all()
    assert torch.equal(enc[0, 3], boundary_map(inst)[0, 0])


def test_bad_size_names_nearest_valid_size():
    expected = r"multiples of 16, at least 32; nearest valid size is 96x48"
    with pytest.raises(InputError, match=expected):
        check_size(50, 100, 16)
    check_size(48, 96, 16)
    # a 1-pixel bottleneck cannot be reflection-padded: too small, not just misaligned
    with pytest.raises(InputError, match=r"at least 32; nearest valid size is 32x32"):
        check_size(16, 32, 16)
    check_size(32, 32, 16)
