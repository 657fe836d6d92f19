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
    assert {"model", "solver", "steps", "dataset", "metrics", "sweep"} <= set(cfg)
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


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
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
    (["steps.sigma_min=10", "steps.sigma_max=1"], "steps.sigma_min (10.0) must be below steps.sigma_max"),
    (["steps=explicit", "steps.final_zero=false"], "steps.final_zero=False conflicts with steps.sigmas"),
    (["steps=explicit", "steps.sigma_min=0.1"], "steps.sigmas fixes the grid"),
    (["device=cuda:7"] if not __import__("torch").cuda.is_available() else ["device=tpu"], "device="),
    (["nfe=4,8"], "use `diffbench sweep`"),
    (["nfe=[1"], "cannot parse override"),
    (["schedule=karras"], "the step-grid group is now `steps`"),
    (["schedule.rho=5"], "the step-grid group is now `steps`"),
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
    (root / "config.yaml").write_text((root / "config.yaml").read_text() + "nfe: 7\n")  # over the schema's default
    monkeypatch.setenv("DIFFBENCH_CONFIG_DIR", str(root))
    assert compose().nfe == 7
    monkeypatch.setenv("DIFFBENCH_CONFIG_DIR", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="DIFFBENCH_CONFIG_DIR"):
        compose()


def test_compose_grid_gives_one_config_per_point():
    cfgs = compose_grid([*DEBUG, "nfe=3,5,7"])
    assert [(c.solver.name, c.nfe) for c in cfgs] == [(s, n) for s in ("euler", "heun") for n in (3, 5, 7)]


def test_steps_group_hashes_and_reads_like_its_old_name(tmp_path):
    """Runs and tables from before the `schedule` -> `steps` rename resume and load unchanged."""
    import pandas as pd

    from diffbench import columns, results
    from diffbench.config import to_dict

    cfg = to_dict(compose(DEBUG))
    old = {("schedule" if k == "steps" else k): v for k, v in cfg.items()}
    assert config_hash(cfg) == config_hash(old)
    assert config_hash(cfg) != config_hash({**cfg, "steps": {**cfg["steps"], "rho": 5.0}})
    pd.DataFrame({"config_hash": ["a"], "status": ["ok"], "schedule.name": ["karras"], "schedule.rho": [7.0],
                  "steps": [9]}).to_csv(tmp_path / "results.csv", index=False)
    table = results.read_table(tmp_path)
    assert table[columns.STEPS].tolist() == ["karras"] and table[columns.N_STEPS].tolist() == [9]
    assert "steps.rho" in table and not any(c.startswith("schedule") for c in table)


def test_schema_dataclasses_are_the_composed_defaults_and_reject_wrong_types():
    from omegaconf import OmegaConf

    from diffbench import schema
    from diffbench.config import to_dict

    cfg = compose()
    assert to_dict(cfg.metrics) == OmegaConf.to_container(OmegaConf.structured(schema.Metrics))
    assert to_dict(cfg.sweep) == OmegaConf.to_container(OmegaConf.structured(schema.Sweep))
    assert to_dict(cfg.dataset) == OmegaConf.to_container(OmegaConf.structured(schema.ModelSamples))
    assert (cfg.n_samples, cfg.batch_size, cfg.dtype) == (schema.Run.n_samples, schema.Run.batch_size, schema.Run.dtype)
    assert compose(["dataset=mnist"]).dataset.kind == "npz"  # a YAML preset inherits its kind's node
    for bad in ("n_samples=many", "metrics.n_boot=x", "sweep.max_local_jobs=all", "dataset.seed=1.5"):
        with pytest.raises(UsageError, match=bad.split("=")[0]):
            compose([bad])
    with pytest.raises(UsageError, match="no such config field"):
        compose(["metrics.nboot=3"])


def test_model_kinds_without_a_preset_are_typed_nodes_of_their_factory():
    cfg = compose(["model=edm", "model.path=x.pt"])
    assert cfg.model.kind == "edm" and cfg.model.compile is False
    with pytest.raises(UsageError, match="model.sigma_data=abc"):
        compose(["model=edm", "model.sigma_data=abc"])
    with pytest.raises(UsageError, match="no such config field"):
        compose(["model=edm", "model.nope=1"])
