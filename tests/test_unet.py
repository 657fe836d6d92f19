"""The project's own UNet, its checkpoint format, and the training / dataset scripts (tiny CPU runs)."""
from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models import make_model
from diffbench.models.unet import UNet, build_from_checkpoint, save_checkpoint

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name: str):
    """Import scripts/<name>.py as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("channels", "resolution", "mult"), [(1, 28, (1, 2, 2)), (3, 32, (1, 2, 2, 2))])
def test_unet_shapes_and_zero_initialised_output(channels, resolution, mult):
    net = UNet(in_channels=channels, resolution=resolution, channels=8, channel_mult=mult, num_blocks=1,
               attn_resolutions=(resolution // 4,))
    x = torch.randn(2, channels, resolution, resolution)
    out = net(x, torch.tensor([0.3, -1.0]))
    assert out.shape == x.shape
    assert float(out.detach().abs().max()) == 0.0  # the output convolution starts at zero (F = 0: D = c_skip x)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_rejects_resolution_it_cannot_halve():
    with pytest.raises(UsageError, match="not divisible"):
        UNet(resolution=30, channel_mult=(1, 2, 2))


def test_checkpoint_roundtrip_keeps_weights(tmp_path):
    arch = {"in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2], "attn_resolutions": [4]}
    net = UNet(**arch)
    save_checkpoint(tmp_path / "c.pt", net, arch, {"kind": "edm"}, (1, 8, 8), {"path": tmp_path}, dtype=torch.float32)
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)  # no pickled code: meta became plain data
    assert ckpt["meta"]["path"] == str(tmp_path)
    loaded = build_from_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_whose_weights_do_not_fit_is_usage_error(tmp_path):
    arch = {"in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2], "attn_resolutions": []}
    save_checkpoint(tmp_path / "c.pt", UNet(**arch), {**arch, "channels": 16}, {"kind": "edm"}, (1, 8, 8))
    with pytest.raises(UsageError, match="weights do not fit") as err:
        make_model("edm", {"path": str(tmp_path / "c.pt")})
    assert "\n" not in str(err.value)


def test_train_script_cpu_smoke_run(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    np.savez_compressed(tmp_path / "data.npz", images=images)
    out = tmp_path / "run"
    summary = script("train").main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--steps", "3",
                                    "--batch", "4", "--channels", "8", "--channel-mult", "1", "2",
                                    "--attn-resolutions", "4", "--samples", "3", "--sample-nfe", "3",
                                    "--log-every", "1", "--device", "cpu"])
    assert summary["steps"] == 3 and len(summary["log"]) == 3
    assert all(np.isfinite(entry["loss"]) for entry in summary["log"])
    model = make_model("edm", {"path": str(out / "checkpoint.pt")})
    assert model.shape == (1, 8, 8) and model.sigma_data == 0.5
    assert np.load(out / "samples.npz")["images"].shape == (3, 8, 8, 1)
    assert (out / "samples.png").is_file() and json.loads((out / "log.json").read_text())["steps"] == 3


def test_make_dataset_converts_pixels_losslessly(tmp_path):
    rng = np.random.default_rng(0)
    splits = [(rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)) for n in (5, 3, 4)]
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(splits), f)
    script("make_dataset").main(["--source", str(tmp_path / "mnist.pkl.gz"), "--train", str(tmp_path / "train.npz"),
                                 "--test", str(tmp_path / "test.npz")])
    train, test = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    assert train["images"].shape == (8, 28, 28, 1) and test["images"].shape == (4, 28, 28, 1)
    assert np.array_equal(test["images"].reshape(4, -1), (splits[2][0] * 256).astype(np.uint8))
    assert np.array_equal(train["labels"], np.concatenate([splits[0][1], splits[1][1]]).astype(np.uint8))


def test_train_script_class_conditional_run(tmp_path):
    """--classes: labels from the npz, a label embedding in the checkpoint, loaded as a conditional model."""
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "data.npz", images=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8),
                        labels=rng.integers(0, 3, 12).astype(np.uint8))
    out = tmp_path / "run"
    summary = script("train").main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--steps", "2",
                                    "--batch", "4", "--channels", "8", "--channel-mult", "1", "2",
                                    "--attn-resolutions", "--classes", "3", "--label-dropout", "0.5",
                                    "--samples", "3", "--sample-nfe", "3", "--device", "cpu"])
    assert summary["train"]["classes"] == 3 and summary["train"]["label_dropout"] == 0.5
    model = make_model("edm", {"path": str(out / "checkpoint.pt")})
    assert model.classes == 3 and model.shape == (1, 8, 8) and model.describe()["model_kind"] == "edm"
    x, sigma = torch.randn(2, 1, 8, 8), torch.full((2,), 1.0)
    assert model.denoise_cond(x, sigma, torch.tensor([0, 1])).shape == x.shape
    with pytest.raises(SystemExit, match="outside --classes 2"):
        script("train").main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--steps", "1",
                              "--classes", "2", "--device", "cpu"])


def test_label_dropout_trains_only_the_null_label():
    """With dropout 1 every label is the null label: only its embedding row gets a gradient."""
    net = UNet(in_channels=1, resolution=8, channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
               classes=3)
    for module in net.modules():  # the zero-initialised output layer would block every gradient to the embedding
        if isinstance(module, torch.nn.Conv2d) and not bool(module.weight.any()):
            torch.nn.init.normal_(module.weight, std=0.05)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    script("train").edm_loss(net, images, torch.tensor([0, 1, 2, 0]), dropout=1.0).backward()
    grad = net.label_embed.weight.grad
    assert float(grad[:3].abs().max()) == 0.0 and float(grad[3].abs().max()) > 0
