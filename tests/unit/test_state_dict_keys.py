"""Networks built here have exactly the reference's state_dict keys, shapes and
parameter counts (manifests in tests/data/state_dict_keys, copied from the reference)."""

import re
from pathlib import Path

import pytest
import torch

from model.config import (
    DiscriminatorConfig,
    EncoderConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
)
from model.networks import build_discriminator, build_encoder, build_generator

KEYS = Path(__file__).parent.parent / "data" / "state_dict_keys"


def read_manifest(name):
    lines = (KEYS / name).read_text().splitlines()
    header = " ".join(line for line in lines if line.startswith("#"))
    n_tensors = int(re.search(r"num_tensors=(\d+)", header).group(1))
    n_params = int(re.search(r"num_params=(\d+)", header).group(1))
    entries = []
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        entries.append((key, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return entries, n_tensors, n_params


GLOBAL = GeneratorConfig()  # paper defaults: ngf 64, 4 downsamplings, 9 blocks
LOCAL = GeneratorConfig(ngf=32, n_local_enhancers=1)
CASES = {
    "keys_netG_global_ngf64_in36.txt": ("G", ModelConfig(generator=GLOBAL)),
    "keys_netG_global_ngf64_in39_instfeat.txt": (
        "G",
        ModelConfig(generator=GLOBAL, use_instance_features=True),
    ),
    "keys_netG_local_ngf32_in36.txt": ("G", ModelConfig(generator=LOCAL)),
    "keys_netG_local_ngf32_in39_instfeat.txt": (
        "G",
        ModelConfig(generator=LOCAL, use_instance_features=True),
    ),
    "keys_netE_nef16_feat3.txt": (
        "E",
        ModelConfig(use_instance_features=True, encoder=EncoderConfig()),
    ),
    "keys_netD_numD2_nl3_ndf64_in39_feat.txt": ("D", ModelConfig()),
    "keys_netD_numD2_nl3_ndf64_in39_noGanFeat.txt": (
        "D",
        ModelConfig(loss=LossConfig(use_feature_matching=False)),
    ),
    "keys_netD_numD3_nl3_ndf64_in39_feat.txt": (
        "D",
        ModelConfig(discriminator=DiscriminatorConfig(num_D=3)),
    ),
}
BUILD = {"G": build_generator, "D": build_discriminator, "E": build_encoder}


@pytest.mark.parametrize("manifest", sorted(CASES))
def test_keys_shapes_and_counts_match_reference(manifest):
    expected, n_tensors, n_params = read_manifest(manifest)
    kind, cfg = CASES[manifest]
    with torch.device("meta"):
        net = BUILD[kind](cfg)
    state = net.state_dict()
    got = [(k, tuple(v.shape)) for k, v in state.items()]
    assert got == expected
    assert len(state) == n_tensors
    assert sum(v.numel() for v in state.values()) == n_params


def test_all_manifests_are_covered():
    assert {p.name for p in KEYS.glob("keys_*.txt")} == set(CASES)
