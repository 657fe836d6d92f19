"""EDM2 latent networks: scripts/export_edm2.py on a stand-in pickle, the edm2 kind against their Precond, decode."""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models import make_model
from tests.helpers import edm2_fake
from tests.helpers import latent_models as tiny

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "export_edm2.py"


def _export(tmp_path: Path, labels: int, name: str) -> tuple[edm2_fake.Precond, Path]:
    spec = importlib.util.spec_from_file_location("export_edm2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = edm2_fake.Precond(labels).eval()
    with open(tmp_path / f"{name}.pkl", "wb") as f:
        pickle.dump({"ema": net, "encoder": edm2_fake.StabilityVAEEncoder()}, f)
    module.export(tmp_path / f"{name}.pkl", tmp_path / f"{name}.pt")
    return net, tmp_path / f"{name}.pt"


@pytest.fixture
def vae_folder(tmp_path):
    tiny.vae().save_pretrained(tmp_path / "vae")
    return str(tmp_path / "vae")


def test_converted_network_is_their_precond_and_decodes_like_their_encoder(tmp_path, vae_folder):
    net, file = _export(tmp_path, 10, "cond")
    model = make_model("edm2", {"path": str(file), "vae": vae_folder})
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64) * 3
    sigma = torch.tensor([0.1, 2.0, 40.0], dtype=torch.float64)
    labels = torch.tensor([3, -1, 9])
    with torch.no_grad():
        theirs = net(x.float(), sigma.float(), torch.eye(10)[labels.clamp(min=0)])
        theirs[1] = net(x[1:2].float(), sigma[1:2].float())[0]  # NO_LABEL: Precond's class_labels=None
    assert torch.allclose(model.denoise_cond(x, sigma, labels).float(), theirs, atol=1e-5)
    assert (model.classes, model.shape) == (10, (4, 8, 8))
    encoder, vae = edm2_fake.StabilityVAEEncoder(), tiny.vae()
    with torch.no_grad():
        scale, bias = (torch.tensor(v).reshape(1, -1, 1, 1) for v in (encoder.scale, encoder.bias))
        raw = (x.float() - bias) / scale
        expected = vae.decode(raw, return_dict=False)[0] * 2 - 1
    assert torch.allclose(model.decode(x).float(), expected, atol=1e-5)


def test_unconditional_network_can_guide_a_conditional_one(tmp_path, vae_folder):
    """EDM2's CFG guides with an unconditional network: it declares the guided model's classes, ignores labels."""
    _, file = _export(tmp_path, 0, "uncond")
    guide = make_model("edm2", {"path": str(file), "vae": vae_folder, "classes": 10})
    x, sigma = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert guide.classes == 10
    labelled, unlabelled = (guide.denoise_cond(x, sigma, torch.tensor(labels)) for labels in ([1, 7], [-1, -1]))
    assert torch.equal(labelled, unlabelled)
    _, cond = _export(tmp_path, 10, "cond")
    with pytest.raises(UsageError, match="takes 10 labels"):
        make_model("edm2", {"path": str(cond), "vae": vae_folder, "classes": 5})


def test_edm2_config_without_the_converted_file_is_one_line(tmp_path, monkeypatch):
    from diffbench.config import group_config
    from diffbench.errors import AssetMissing

    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path))
    options = group_config("model", "edm2-img512")
    with pytest.raises(AssetMissing, match=r"edm2-img512-s-fid.pt: no such file .*scripts/export_edm2.py"):
        make_model(options.pop("kind"), options)
