"""GPU speed options run on CPU too: channels-last, torch.compile guards, TF32 switch, overlapped metric feed."""
from __future__ import annotations

import pytest
import torch

from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.metrics import ErrorStats
from diffbench.metrics.features import resize_clean, resize_clean_matmul
from diffbench.metrics.feed import MetricFeed
from diffbench.models import make_model
from diffbench.models.unet import UNet, save_checkpoint
from diffbench.sampling import set_tf32

ARCH = {"in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2], "attn_resolutions": [4]}


@pytest.fixture
def checkpoint(tmp_path):
    """A small EDM UNet checkpoint whose output layer is not zero (so outputs differ from x's skip part)."""
    torch.manual_seed(0)
    net = UNet(**ARCH)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    path = tmp_path / "net.pt"
    save_checkpoint(path, net, ARCH, {"kind": "edm"}, (1, 8, 8), dtype=torch.float32)
    return str(path)


def test_channels_last_gives_the_same_denoiser_output(checkpoint):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = make_model("edm", {"path": checkpoint})(x, 1.5)
    fast = make_model("edm", {"path": checkpoint, "channels_last": True})(x, 1.5)
    assert not torch.equal(plain, x * 0.5**2 / (1.5**2 + 0.5**2))  # the network contributes
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_bad_compile_mode_is_a_usage_error(checkpoint):
    with pytest.raises(UsageError, match="model.compile"):
        make_model("edm", {"path": checkpoint, "compile": "fastest"})


def test_compile_of_a_torchscript_archive_is_a_usage_error(tmp_path):
    scripted = torch.jit.trace(UNet(**ARCH).eval(), (torch.zeros(1, 1, 8, 8), torch.zeros(1)))
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    with pytest.raises(UsageError, match="already compiled"):
        make_model("edm", {"path": str(path), "shape": [1, 8, 8], "compile": True})


def test_tf32_switch_sets_both_backends():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class ErrorSuite:
    """The MetricSuite interface MetricFeed uses, over solver-error statistics only."""

    def __init__(self) -> None:
        self.error = ErrorStats()

    def update(self, x, indices, reference):
        self.error.update(x, reference[list(indices)])


@pytest.mark.parametrize("background", [False, True])
def test_metric_feed_keeps_batch_order_in_and_out_of_a_thread(background):
    g = torch.Generator().manual_seed(0)
    reference, samples = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
    suite = ErrorSuite()
    with MetricFeed(suite, reference, background=background) as feed:
        for start in range(0, 40, 8):
            feed.submit(samples[start:start + 8], range(start, start + 8))
    expected = (samples.double() - reference.double()).pow(2).mean(1).numpy()
    assert (suite.error.per_sample_mse == expected).all()
    assert feed.seconds > 0


def test_metric_feed_reraises_a_failed_update():
    class Failing:
        def update(self, *args):
            raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"), MetricFeed(Failing(), None, background=True) as feed:
        feed.submit(torch.zeros(1), [0])


@pytest.mark.parametrize("size", [299, 17])
def test_matmul_clean_resize_matches_pillow(size):
    """The GPU path of the clean resize (run here on CPU) equals Pillow's to float32 rounding."""
    images = torch.randint(0, 256, (3, 3, 28, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pillow, matmul = resize_clean(images, size), resize_clean_matmul(images, size, chunk=2)
    assert matmul.shape == pillow.shape == (3, 3, size, size)
    assert float((matmul - pillow).abs().max()) <= 1e-4


def test_a_sweep_compiles_a_model_once_and_rows_record_its_warm_up(checkpoint, tmp_path, monkeypatch, one_thread):
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module, **options: object) -> torch.nn.Module:
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    table = run_sweep(["model=edm", f"model.path={checkpoint}", "model.compile=true", "solver=euler,dpmpp_2m",
                       "nfe=3,4", "n_samples=8", "batch_size=8", "metrics.names=[]", f"out={tmp_path / 'out'}",
                       f"cache_dir={tmp_path / 'cache'}"], progress=False).frame()
    assert len(table) == 4 and (table["status"] == "ok").all()
    assert len(compiled) == 1  # one model for the four points: its graph is reused, not recompiled per point
    warm = sorted(table["time_warmup_s"])
    assert warm[0] == warm[2] == 0 and warm[3] > 0  # the first point pays the one batch shape's warm-up
