import numpy as np
import pytest
import torch

from components.params import load_params, stage_model_config, stage_size
from model.errors import ConfigError
from model.features import FeatureConfig, cluster_features, features_from_clusters


def test_clusters_per_class_with_area_filter():
    rng = np.random.default_rng(0)
    samples = []
    for centre in ([1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]):  # two tight groups of cars
        for _ in range(20):
            samples.append((26, 0.1, np.array(centre) + rng.normal(0, 0.01, 3)))
    samples.append((26, 0.001, np.array([9.0, 9.0, 9.0])))  # too small: ignored
    samples += [(24, 0.2, np.array([0.3, 0.3, 0.3])), (24, 0.2, np.array([0.5, 0.5, 0.5]))]
    centres = cluster_features(samples, FeatureConfig(n_clusters=2, min_area=0.01))
    cars = sorted(centres[26].tolist())
    assert np.allclose(cars, [[-1, 0.5, 0], [1, 0, 0]], atol=0.02)
    assert centres[24].shape == (2, 3)  # k = min(n, n_clusters)
    assert 9.0 not in centres[26]


def test_features_from_clusters_choice_and_missing_class():
    inst = torch.tensor([[26000, 26000, 26001], [7, 7, 26001]]).view(1, 1, 2, 3)
    centres = {26: torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    out = features_from_clusters(inst, centres, 2, choice={26000: 1, 26001: 0})
    assert out[0, :, 0, 0].tolist() == [3.0, 4.0]
    assert out[0, :, 0, 2].tolist() == [1.0, 2.0]
    assert out[0, :, 1, 0].tolist() == [0.0, 0.0]  # road has no clusters: zeros


def test_params_overrides_and_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data: {width: 256, height: 128}\ntrain_local: {niter: 3}\n")
    params = load_params(p, ["model.generator.ngf=8", "train_global.lr=0.001"])
    assert params.model.generator.ngf == 8 and params.train_global.lr == 0.001
    # a section given in part keeps the paper recipe for the rest
    assert params.train_local.niter == 3 and params.train_local.niter_fix_global == 10
    g = stage_model_config(params, "global")
    assert g.generator.ngf == 16 and g.generator.n_local_enhancers == 0
    assert g.discriminator.num_D == 2 and stage_size(params, "global") == (128, 64)
    local = stage_model_config(params, "local")
    assert local.discriminator.num_D == 3 and local.generator_input_nc == 36


def test_params_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train_global.nitre'"):
        load_params(None, ["train_global.nitre=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_params(None, ["train_global.niter"])
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
