import pytest

from model.config import ModelConfig, from_dict, to_dict
from model.errors import ConfigError


def test_round_trip():
    cfg = from_dict(ModelConfig, {"label_nc": 20, "generator": {"ngf": 32, "n_local_enhancers": 1}})
    assert cfg.label_nc == 20 and cfg.generator.ngf == 32 and cfg.generator.size_multiple == 32
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key 'generator.ngff'"):
        from_dict(ModelConfig, {"generator": {"ngff": 3}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"label_nc": "35"}, "label_nc: expected an integer"),
        ({"use_instance_map": 1}, "use_instance_map: expected true or false"),
        ({"loss": {"gan_mode": "wgan"}}, "loss.gan_mode: 'wgan' is not one of ls, vanilla, hinge"),
        ({"label_nc": 0}, "label_nc 0"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data)


def test_derived_channels():
    cfg = from_dict(ModelConfig, {"label_nc": 0, "use_instance_map": False})
    assert cfg.generator_input_nc == 3 and cfg.discriminator_input_nc == 6
    cfg = from_dict(ModelConfig, {"use_instance_features": True})
    assert cfg.generator_input_nc == 39 and cfg.discriminator_input_nc == 39
