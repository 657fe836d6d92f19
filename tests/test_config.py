"""Config composition, sweep-grid expansion, validation and the resume key."""
from __future__ import annotations

import shutil

import pytest

from diffbench.config import compose, compose_grid, config_dir, config_hash, expand_grid, group_options, settings
from diffbench.errors import UsageError

DEBUG = ["debug=default"]


def _axis(points: list[list[str]], key: str) -> list[str]:
    return [next(o.split("=", 1)[1] for o in p if o.startswith(f"{key}=")) for p in points]


def test_default_config_composes_every_group():
    cfg = compose()
    assert {"model", "solver", "schedule", "dataset", "metrics", "sweep"} <= set(cfg)
    assert cfg.model.kind == "image_mixture" and cfg.solver.name == "euler"
    assert cfg.choices.solver == "euler"
    run = settings(cfg)
    assert run.nfe == cfg.nfe and run.device.type in ("cpu", "cuda")


def test_every_registered_solver_is_a_group_option():
    from diffbench.solvers import SOLVERS

    options = group_options("solver")
    assert set(SOLVERS) <= set(options)
    cfg = compose(["solver=ddim"])
    assert cfg.solver.name == "ddim" and "eta" in cfg.solver


def test_grid_expands_cli_sweeps_and_sweep_file_axes():
    points = expand_grid([*DEBUG, "solver=euler,heun", "nfe=range(4,10,2)"])
    assert len(points) == 2 * 3
    assert _axis(points, "nfe") == ["4", "6", "8"] * 2
    assert _axis(points, "solver") == ["euler"] * 3 + ["heun"] * 3
    assert all("debug=default" in p for p in points)
    # The sweep file's axes apply when the command line does not name them.
    assert len(expand_grid(DEBUG)) == 2 * 2


def test_plain_override_of_an_axis_replaces_it_and_lists_sweep():
    assert _axis(expand_grid([*DEBUG, "solver=heun"]), "solver") == ["heun", "heun"]
    assert _axis(expand_grid([*DEBUG, "nfe=[3,7,9]"]), "nfe") == ["3", "7", "9"] * 2
    assert set(_axis(expand_grid([*DEBUG, "solver=glob(euler*)"]), "solver")) == {
        n for n in group_options("solver") if n.startswith("euler")}


def test_group_option_applies_across_a_swept_group():
    """guidance.scale set once (or swept) with guidance=cfg,interval: the base config does not choose the group."""
    guided = [*DEBUG, "model=class_gmm", "conditions=balanced", "guidance=cfg,interval"]
    cfgs = compose_grid([*guided, "guidance.scale=3"])
    assert {(c.guidance.name, c.guidance.scale) for c in cfgs} == {("cfg", 3.0), ("interval", 3.0)}
    cfgs = compose_grid([*guided, "guidance.scale=1,2"])
    assert sorted({(c.guidance.name, c.guidance.scale) for c in cfgs}) == [
        ("cfg", 1.0), ("cfg", 2.0), ("interval", 1.0), ("interval", 2.0)]
    assert all(c.guidance.sigma_lo == 0.5 for c in compose_grid([*DEBUG, "model=class_gmm", "conditions=balanced",
                                                                 "guidance=interval", "guidance.sigma_lo=0.5"]))


def test_group_option_missing_from_one_choice_names_the_grid_point():
    with pytest.raises(UsageError, match=r"grid point .*guidance=cfg: guidance.sigma_lo: no such config field"):
        compose_grid([*DEBUG, "model=class_gmm", "conditions=balanced", "guidance=cfg,interval",
                      "guidance.sigma_lo=0.5"])


def test_empty_sweep_list_is_a_usage_error():
    with pytest.raises(UsageError, match="nfe: the sweep list is empty"):
        expand_grid([*DEBUG, "nfe=[]"])


@pytest.mark.parametrize("overrides, message", [
    (["solver=nope"], "solver=nope is not an option; choose one of"),
    (["model=nope"], "model=nope is not an option"),
    (["nfe=0"], "nfe must be an integer >= 1"),
    (["no_such_field=1"], "no_such_field: no such config field"),
    (["schedule.sigma_min=10", "schedule.sigma_max=1"], "schedule.sigma_min (10.0) must be below schedule.sigma_max"),
    (["schedule=explicit", "schedule.final_zero=false"], "schedule.final_zero=False conflicts with schedule.sigmas"),
    (["schedule=explicit", "schedule.sigma_min=0.1"], "schedule.sigmas fixes the grid"),
    (["device=cuda:7"] if not __import__("torch").cuda.is_available() else ["device=tpu"], "device="),
    (["nfe=4,8"], "use `diffbench sweep`"),
    (["nfe=[1"], "cannot parse override"),
])
def test_bad_input_is_one_line_usage_error(overrides, message):
    with pytest.raises(UsageError) as info:
        settings(compose(overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_hash_is_the_resume_key():
    base = compose(["nfe=5"])
    assert config_hash(base) == config_hash(compose(["nfe=5", "out=elsewhere", "batch_size=3", "device=cpu"]))
    assert config_hash(base) != config_hash(compose(["nfe=6"]))
    assert config_hash(base) != config_hash(compose(["nfe=5", "solver=heun"]))


def test_config_dir_from_environment(tmp_path, monkeypatch):
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "config.yaml").write_text((root / "config.yaml").read_text().replace("nfe: 10 ", "nfe: 7 "))
    monkeypatch.setenv("DIFFBENCH_CONFIG_DIR", str(root))
    assert compose().nfe == 7
    monkeypatch.setenv("DIFFBENCH_CONFIG_DIR", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="DIFFBENCH_CONFIG_DIR"):
        compose()


def test_compose_grid_gives_one_config_per_point():
    cfgs = compose_grid([*DEBUG, "nfe=3,5,7"])
    assert [(c.solver.name, c.nfe) for c in cfgs] == [(s, n) for s in ("euler", "heun") for n in (3, 5, 7)]
