import math

import numpy as np
import pytest
import torch

from model.errors import CheckpointError
from model.metrics import ConfusionMatrix, label_ids_to_train_ids, scores
from model.pspnet import PSPNet, PSPNetConfig, load_pspnet_state, segment
from tests.unit.test_state_dict_keys import KEYS


@pytest.mark.parametrize("backbone, n", [("resnet50", 370), ("resnet101", 676)])
def test_pspnet_keys_equal_published_checkpoints(backbone, n):
    expected = []
    for line in (KEYS / f"pspnet{backbone[6:]}_semseg_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        expected.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    with torch.device("meta"):
        net = PSPNet(PSPNetConfig(backbone=backbone))
    got = [(f"module.{k}", tuple(v.shape)) for k, v in net.state_dict().items()]
    assert len(expected) == n
    assert got == expected


def test_published_layout_loads_and_segments():
    net = PSPNet(PSPNetConfig(backbone="light", num_classes=5))
    state = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    other = PSPNet(PSPNetConfig(backbone="light", num_classes=5))
    load_pspnet_state(other, state, "x.pth")
    rgb = torch.rand(1, 3, 33, 49) * 255
    a = segment(net, rgb)
    torch.testing.assert_close(a, segment(other, rgb))
    assert a.shape == (1, 5, 33, 49)
    torch.testing.assert_close(a.sum(1), torch.ones(1, 33, 49))
    windowed = segment(net, rgb, crop=25, flip=True)
    assert windowed.shape == a.shape
    torch.testing.assert_close(windowed.sum(1), torch.ones(1, 33, 49))
    with pytest.raises(CheckpointError, match="not a PSPNet"):
        load_pspnet_state(PSPNet(PSPNetConfig(backbone="light")), {"a": torch.zeros(1)}, "y")


def test_metrics_hand_made_confusion():
    # 2x3 image; classes 0 (road) and 1 (sidewalk); one ignored pixel
    gt = np.array([[0, 0, 1], [1, 255, 0]])
    pred = np.array([[0, 1, 1], [1, 0, 255]])
    cm = ConfusionMatrix()
    cm.update(pred, gt)
    s = scores(cm)
    # road: TP 1, FP 0 (the pixel predicted road has ignored GT), FN 2 -> 1/3
    # sidewalk: TP 2, FP 1, FN 0 -> 2/3 ; pixel accuracy 3 / 5
    assert s.iou_per_class["road"] == pytest.approx(1 / 3)
    assert s.iou_per_class["sidewalk"] == pytest.approx(2 / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)
    assert math.isnan(s.iou_per_class["sky"])  # absent and never predicted: NaN
    assert s.mean_iou == pytest.approx(0.5)  # mean over classes with a defined IoU


def test_per_class_iou_equals_cityscapesscripts(tmp_path):
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    from PIL import Image

    rng = np.random.default_rng(0)
    args = ev.args
    args.evalInstLevelScore = False
    conf = ev.generateMatrix(args)
    ours = ConfusionMatrix()
    for i in range(3):
        gt = rng.integers(0, 34, (40, 60)).astype(np.uint8)
        pred = rng.integers(0, 34, (40, 60)).astype(np.uint8)
        agree = rng.random((40, 60)) < 0.3  # some correct pixels, so IoUs are not all 0
        pred[agree] = gt[agree]
        gt_path, pred_path = tmp_path / f"gt{i}_labelIds.png", tmp_path / f"pred{i}.png"
        Image.fromarray(gt).save(gt_path)
        Image.fromarray(pred).save(pred_path)
        ev.evaluatePair(str(pred_path), str(gt_path), conf, {}, {}, args)  # fills conf
        ours.update(label_ids_to_train_ids(pred), label_ids_to_train_ids(gt))
    mine = scores(ours).iou_per_class
    from model.labels import LABELS

    for lab in LABELS:
        if lab.id < 0 or lab.ignore_in_eval:
            continue
        theirs = ev.getIouScoreForLabel(lab.id, conf, args)
        assert mine[lab.name] == pytest.approx(theirs, abs=1e-12), lab.name
