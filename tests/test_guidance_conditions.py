"""Condition sets bound by sample index, their checks, and the engine's side of guidance: hashes of unconditional
points unchanged, network budgets, row columns, bad input as one-line errors before sampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench import columns as col
from diffbench.config import compose, config_hash, to_dict
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from diffbench.models.conditions import make_conditions
from tests.helpers.cli import run_cli
from tests.helpers.sweeps import sweep_args

GUIDED = ["model=class_gmm", "conditions=balanced", "solver=euler", "nfe=8"]


def labels(name: str, n: int, classes: int = 4, **options) -> torch.Tensor:
    return make_conditions({"name": name, **options}, n, classes).labels


def test_balanced_labels():
    """cyclic: i mod K; shuffled: every block of K a permutation, sample i's label the same for any n."""
    assert labels("balanced", 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    long, short = labels("balanced", 40, order="shuffled", seed=3), labels("balanced", 13, order="shuffled", seed=3)
    assert torch.equal(long[:13], short)
    assert all(sorted(block.tolist()) == [0, 1, 2, 3] for block in long.reshape(10, 4))
    assert not torch.equal(long, labels("balanced", 40, order="shuffled", seed=4))
    assert not torch.equal(long, labels("balanced", 40))


def test_label_files(tmp_path):
    """.npy and .txt label files give sample i the i-th label; short, foreign or missing files are UsageErrors."""
    np.save(tmp_path / "l.npy", np.array([3, 1, 2, 0, 1]))
    (tmp_path / "l.txt").write_text("3\n1\n2\n0\n1\n")
    for name in ("l.npy", "l.txt"):
        got = make_conditions({"name": "file", "path": str(tmp_path / name)}, 4, 4)
        assert got.labels.tolist() == [3, 1, 2, 0] and got.name == f"file:{name}"
    assert make_conditions({"name": "file", "path": str(tmp_path / "l.npy")}, 4, 4).content_hash != \
        make_conditions({"name": "balanced"}, 4, 4).content_hash
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    for options, n, classes, match in (({"path": str(tmp_path / "l.npy")}, 6, 4, "holds 5 labels"),
                                       ({"path": str(tmp_path / "l.npy")}, 4, 3, "classes 0..2"),
                                       ({"path": str(tmp_path / "f.npy")}, 2, 4, "integer labels"),
                                       ({"path": str(tmp_path / "missing.npy")}, 2, 4, "no such file")):
        with pytest.raises(UsageError, match=match):
            make_conditions({"name": "file", **options}, n, classes)


def test_unconditional_hashes_unchanged():
    """With conditions and guidance off, a point's resume key is what it was before they existed."""
    cfg = to_dict(compose(["solver=heun", "nfe=9"]))
    assert cfg["conditions"] == {"name": "none"} and cfg["guidance"] == {"name": "none"}
    before = {k: v for k, v in cfg.items() if k not in ("conditions", "guidance")}
    assert config_hash(cfg) == config_hash(before)
    assert config_hash(to_dict(compose(["model=class_gmm", "conditions=balanced"]))) != \
        config_hash(to_dict(compose(["model=class_gmm"])))


def test_network_budget_halves_guided_calls():
    """sweep.nfe_counts=network: a budget of 16 passes gives a CFG point 8 calls, an unguided one 16."""
    guided = prepare([*GUIDED, "metrics=error_only", "guidance=cfg", "nfe=16", "sweep.nfe_counts=network"])[0]
    plain = prepare([*GUIDED, "metrics=error_only", "nfe=16", "sweep.nfe_counts=network"])[0]
    calls = prepare([*GUIDED, "metrics=error_only", "guidance=cfg", "nfe=16"])[0]
    assert (guided.nfe, guided.nfe_budget, guided.nfe_counts) == (8, 16, "network")
    assert (plain.nfe, calls.nfe, calls.nfe_counts) == (16, 16, "calls")


@pytest.mark.parametrize("overrides, match", [
    (["model=gmm", "conditions=balanced"], "class-conditional"),
    (["model=class_gmm", "guidance=cfg"], "needs conditions"),
    (["model=class_gmm", "conditions=file", "conditions.path=/nonexistent.npy"], "no such file"),
    (["model=class_gmm", "conditions=balanced", "conditions.order=random"], "order=random"),
    (["model=class_gmm", "conditions=balanced", "guidance=interval", "guidance.sigma_lo=3", "guidance.sigma_hi=1"],
     "sigma_lo < sigma_hi"),
    (["model=class_gmm", "conditions=balanced", "sweep.nfe_counts=passes"], "nfe_counts=passes"),
])
def test_bad_input_before_sampling(overrides, match):
    with pytest.raises(UsageError, match=match):
        prepare([*overrides, "metrics=error_only", "solver=euler", "nfe=8"])


def test_sweep_rows_record_guidance(tmp_path, sweep_cache):
    """A guided sweep's rows: condition set and hash, guidance fields, calls and network evaluations."""
    args = sweep_args(tmp_path, sweep_cache, *GUIDED, "guidance=interval", "guidance.scale=1,3", "n_samples=8",
                      "guidance.sigma_lo=0.5", "guidance.sigma_hi=5")
    df = run_sweep(args, progress=False).frame()
    assert list(df[col.STATUS]) == ["ok", "ok"] and set(df["guidance.scale"]) == {1.0, 3.0}
    assert set(df[col.NFE_MEASURED]) == {8} and all(8 < n < 16 for n in df[col.NFE_NETWORK])
    assert set(df["condition_set"]) == {"balanced-cyclic"} and df["condition_hash"].nunique() == 1
    assert df["rmse_ref"].iloc[0] != df["rmse_ref"].iloc[1]  # each scale has its own guided reference solution
    again = run_sweep(args, progress=False)
    assert again.ran == 0 and again.skipped == 2


def test_autoguidance_sweep_records_its_guide(tmp_path, sweep_cache):
    args = sweep_args(tmp_path, sweep_cache, *GUIDED, "guidance=autoguidance", "guidance.guide=class_gmm_weak",
                      "n_samples=8")
    df = run_sweep(args, progress=False).frame()
    assert list(df[col.STATUS]) == ["ok"] and df["guidance.guide_model.std"].iloc[0] == 0.4
    assert df[col.NFE_NETWORK].iloc[0] == 2 * df[col.NFE_MEASURED].iloc[0]


@pytest.mark.slow  # ~17 s: the RK45 reference solutions through the network
def test_class_conditional_unet_end_to_end(tmp_path, sweep_cache):
    """The project's UNet with a label embedding (random weights) runs a guided sweep."""
    args = sweep_args(tmp_path, sweep_cache, "model=random_class_unet", "model.shape=[1,8,8]", "model.channels=8",
                      "conditions=balanced", "guidance=cfg", "guidance.scale=2", "solver=dpmpp_2m", "nfe=4",
                      "n_samples=4", "metrics.error_samples=2", "metrics.reference.rtol=1e-2",
                      "metrics.reference.atol=1e-2")
    df = run_sweep(args, progress=False).frame()
    assert list(df[col.STATUS]) == ["ok"], df[col.REASON].tolist()
    assert (df[col.NFE_MEASURED].iloc[0], df[col.NFE_NETWORK].iloc[0]) == (4, 8)


@pytest.mark.parametrize("extra, message", [
    (["model=class_gmm", "conditions=file", "conditions.path={labels}"],
     "labels span 0..9 but the model has classes 0..3"),
    (["model=gmm", "conditions=balanced", "guidance=cfg"], "this model takes no labels"),
])
def test_bad_conditions_are_one_line_exit_2_with_nothing_written(tmp_path, capsys, extra, message):
    """Labels outside the model's classes, guidance on an unconditional model: `diffbench sweep` exits 2 first."""
    np.save(tmp_path / "labels.npy", np.arange(16) % 10)
    out = tmp_path / "out"
    args = [a.format(labels=tmp_path / "labels.npy") for a in extra]
    code, _, err = run_cli(capsys, "sweep", "debug=default", "metrics=error_only", f"out={out}", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_guided_reference_keys_follow_the_guide_models_config(tmp_path, sweep_cache, monkeypatch):
    """Reference solutions of autoguidance are keyed by the guide's resolved config, not only by its name."""
    from diffbench import config
    from diffbench.engine.references import reference_key

    args = sweep_args(tmp_path, sweep_cache, *GUIDED, "guidance=autoguidance", "guidance.guide=class_gmm_weak",
                      "n_samples=8")
    point = prepare(args)[0]
    assert point.plan is not None
    before = reference_key(point.cfg, point.plan, 8)
    weak = config.group_config("model", "class_gmm_weak")
    monkeypatch.setattr(config, "group_config", lambda group, name: {**weak, "std": weak["std"] + 0.1})
    assert reference_key(point.cfg, point.plan, 8) != before  # same guide name, another guide model
