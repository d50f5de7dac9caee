"""A tiny model (random weights, instance features with cluster centres) exported once to
ONNX through `serve`'s checkpoint path, and two bundled street scenes to open."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config

# Batch norm, with statistics from data as training leaves them, keeps the random
# generator local in eval mode: a change reaches only its receptive field (measured: 18
# px at a 0.5-level threshold) where instance norm would spread it over the whole image.
CFG = tiny_config(
    label_nc=35,
    use_instance_features=True,
    generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=1, norm="batch"),
)
REACH = 20  # pixels: beyond this distance from an edit the image must not change
CENTRES = {  # class id -> (k, feat_num): cars have 3 styles, roads 2
    26: torch.tensor([[0.9, -0.9, 0.5], [-0.9, 0.9, -0.5], [0.0, 0.5, 0.9]]),
    7: torch.tensor([[0.3, 0.3, 0.3], [-0.3, -0.3, -0.3]]),
}


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory) -> dict[str, Path]:
    from components import synth
    from components.engine import cached_onnx

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(5)
    model = Pix2PixHD(CFG, with_discriminator=False)
    calibrate(model)
    model.eval()
    payload = model_payload(model)
    payload["cluster_centers"] = CENTRES
    ckpt = save_checkpoint(root / "model.pth", payload)
    onnx = cached_onnx(ckpt)  # what `serve --model model.pth` exports
    synth.run(root / "data", num_train=0, num_val=2, width=128, height=64, seed=0)
    return {"root": root, "checkpoint": ckpt, "onnx": onnx, "data": root / "data"}


def calibrate(model: Pix2PixHD) -> None:
    """Batch-norm statistics from random blocky label maps (cumulative averages)."""
    net = model.netG
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
    net.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            label = torch.randint(0, 35, (4, 1, 8, 16), generator=gen)
            label = label.repeat_interleave(8, 2).repeat_interleave(8, 3)
            features = torch.randn(4, 3, 64, 128, generator=gen) * 0.5
            net(torch.cat([model.encode_label(label, label * 1000), features], 1))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def scene(h: int = 32, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Road with one car (instance 26001) and one person (24001)."""
    label = np.full((h, w), 7, np.uint8)
    label[: h // 4] = 23  # sky
    label[h // 3 : 2 * h // 3, w // 8 : w // 2] = 26
    label[h // 3 :, 3 * w // 4 : 7 * w // 8] = 24
    inst = label.astype(np.uint16)
    inst[label == 26] = 26001
    inst[label == 24] = 24001
    return label, inst


def far_from(mask: np.ndarray, distance: int) -> np.ndarray:
    """Pixels farther than ``distance`` from the bounding box of ``mask``."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    near = (yy >= ys.min() - distance) & (yy <= ys.max() + distance)
    near &= (xx >= xs.min() - distance) & (xx <= xs.max() + distance)
    return ~near


def live(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread: (url, stop)."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def wait_ready(url: str, proc, err, seconds: float = 60) -> None:
    """Poll ``url``/readyz until the server process ``proc`` answers 200 (its stderr
    ``err`` in the failure message)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, err.read()[-2000:]
        time.sleep(0.1)
