import pytest
import torch

from model.checkpoint import (
    build_model,
    import_official,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from model.config import DiscriminatorConfig, GeneratorConfig, LossConfig, ModelConfig
from model.errors import CheckpointError, InputError
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config


def _inputs(cfg, n=1, h=32, w=64):
    label = torch.randint(0, cfg.label_nc, (n, 1, h, w))
    inst = label * 1000 + torch.randint(0, 3, (n, 1, h, w))
    image = torch.rand(n, 3, h, w) * 2 - 1
    return label, inst, image


def _write_reference_files(tmp_path, model: Pix2PixHD):
    """Files in the reference's layout: plain state_dicts, as `torch.save(net.state_dict())`."""
    g_state = dict(model.netG.state_dict())
    # Old checkpoints carry InstanceNorm running statistics: they must be ignored.
    g_state["model.2.running_mean"] = torch.zeros(model.cfg.generator.ngf)
    g_state["model.2.running_var"] = torch.ones(model.cfg.generator.ngf)
    paths = {"generator": tmp_path / "latest_net_G.pth"}
    torch.save(g_state, paths["generator"])
    if model.netD is not None:
        paths["discriminator"] = tmp_path / "latest_net_D.pth"
        torch.save(model.netD.state_dict(), paths["discriminator"])
    if model.netE is not None:
        paths["encoder"] = tmp_path / "latest_net_E.pth"
        torch.save(model.netE.state_dict(), paths["encoder"])
    return paths


CONFIGS = {
    "global": tiny_config(),
    "local2": tiny_config(
        generator=GeneratorConfig(
            ngf=4, n_downsample_global=2, n_blocks_global=2, n_local_enhancers=2, n_blocks_local=1
        )
    ),
    "features": tiny_config(
        use_instance_features=True,
        generator=GeneratorConfig(
            ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=2
        ),
    ),
    "no_inst_flatD": tiny_config(
        use_instance_map=False,
        loss=LossConfig(use_feature_matching=False, use_vgg_loss=False),
        discriminator=DiscriminatorConfig(num_D=3, n_layers_D=3, ndf=4),
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_import_round_trip(tmp_path, name):
    cfg = CONFIGS[name]
    source = Pix2PixHD(cfg).eval()
    paths = _write_reference_files(tmp_path, source)
    payload = import_official(label_nc=cfg.label_nc, use_instance_map=cfg.use_instance_map, **paths)
    out = save_checkpoint(tmp_path / "imported.pth", payload)
    ckpt = load_checkpoint(out)
    model = build_model(ckpt).eval()
    # Architecture inferred from shapes alone equals the one the files came from.
    assert model.cfg.generator == cfg.generator
    assert model.cfg.discriminator == cfg.discriminator
    assert model.cfg.use_instance_features == cfg.use_instance_features
    for key, value in source.netD.state_dict().items():
        assert torch.equal(ckpt["D"][key], value)
    label, inst, image = _inputs(cfg, n=2)
    inst = inst if cfg.use_instance_map else None
    torch.testing.assert_close(
        model.generate(label, inst, image=image),
        source.generate(label, inst, image=image),
        rtol=0,
        atol=0,
    )


def test_checkpoint_round_trip_keeps_config(tmp_path):
    model = Pix2PixHD(tiny_config(), with_discriminator=False)
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pth", model_payload(model))
    ckpt = load_checkpoint(path)
    assert build_model(ckpt).cfg == model.cfg
    assert not list(path.parent.glob("*.tmp"))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = Pix2PixHD(tiny_config(), with_discriminator=False)
    path = save_checkpoint(tmp_path / "ckpt.pth", model_payload(model))
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="cut.pth: not a readable"):
        import_official(tmp_path / "cut.pth", label_nc=6)


def test_wrong_files_are_clear_errors(tmp_path):
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth"):
        import_official(tmp_path / "text.pth", label_nc=6)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a pix2pixHD generator"):
        import_official(tmp_path / "other.pth", label_nc=6)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save({"G": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="import-checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")


def test_import_with_wrong_label_nc_names_channels(tmp_path):
    paths = _write_reference_files(tmp_path, Pix2PixHD(tiny_config(), with_discriminator=False))
    with pytest.raises(CheckpointError, match="7 input channels, but label_nc=35"):
        import_official(paths["generator"], label_nc=35)
    with pytest.raises(CheckpointError, match="--no-instance-map"):
        import_official(paths["generator"], label_nc=7)


def test_mismatched_weights_are_rejected(tmp_path):
    small = Pix2PixHD(tiny_config(), with_discriminator=False)
    payload = model_payload(small)
    payload["config"]["generator"]["n_blocks_global"] = 2
    path = save_checkpoint(tmp_path / "bad.pth", payload)
    with pytest.raises(CheckpointError, match="missing"):
        build_model(load_checkpoint(path))


def test_bad_label_id_is_a_clear_error():
    model = Pix2PixHD(tiny_config(), with_discriminator=False)
    label, inst, _ = _inputs(model.cfg)
    label[0, 0, 3, 4] = 200
    with pytest.raises(InputError, match="label id 200 is outside \\[0, 5\\]"):
        model.generate(label, inst)


def test_bad_size_is_a_clear_error():
    model = Pix2PixHD(tiny_config(), with_discriminator=False)
    label, inst, _ = _inputs(model.cfg, h=30, w=64)
    with pytest.raises(InputError, match="nearest valid size is 64x32"):
        model.generate(label, inst)


def test_generate_builds_no_autograd_graph():
    model = Pix2PixHD(tiny_config(), with_discriminator=False)
    label, inst, _ = _inputs(model.cfg)
    out = model.generate(label, inst)
    assert not out.requires_grad and out.grad_fn is None


def test_paper_defaults():
    cfg = ModelConfig()
    assert (cfg.label_nc, cfg.generator.ngf, cfg.generator.n_downsample_global) == (35, 64, 4)
    assert (cfg.generator.n_blocks_global, cfg.discriminator.num_D) == (9, 2)
    assert (cfg.discriminator.n_layers_D, cfg.discriminator.ndf, cfg.loss.lambda_feat) == (
        3,
        64,
        10,
    )
    assert cfg.loss.gan_mode == "ls" and cfg.loss.use_feature_matching and cfg.loss.use_vgg_loss
    assert (cfg.encoder.feat_num, cfg.encoder.nef, cfg.encoder.n_clusters) == (3, 16, 10)
    assert cfg.generator_input_nc == 36 and cfg.discriminator_input_nc == 39
