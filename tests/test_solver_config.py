"""One source of solver defaults: the registered signature is the typed config node, what `list` shows,
what runs and what the row records; names fix their algorithm; bad option values stop before anything runs."""
from __future__ import annotations

import functools
import json
import math
from dataclasses import replace

import pandas as pd
import pytest

from diffbench.cli import main
from diffbench.config import CONFIG_PATH_ENV, compose, node_defaults, to_dict, typed_nodes
from diffbench.engine.points import prepare
from diffbench.errors import UsageError
from diffbench.models.base import CountingDenoiser
from diffbench.solvers import SOLVERS

TINY = ["debug=default", "model=gaussian", "model.shape=[4]", "metrics=error_only"]


def _plain(value):
    """JSON-normal form: tuples become lists, so defaults, configs, calls and rows compare equal."""
    return json.loads(json.dumps(value))


def test_every_solver_node_holds_its_signature_defaults():
    for name, spec in SOLVERS.items():
        assert node_defaults("solver", name) == _plain(spec.options()), name
        assert _plain(spec.bind(node_defaults("solver", name))) == _plain(spec.options())


def test_benchmarked_defaults_live_in_the_functions():
    """The values the deleted YAMLs benchmarked are the function defaults now (issue 12's 17 contradictions)."""
    lof = [n for n, s in SOLVERS.items() if "lower_order_final" in s.options()]
    # dpmpp_3m_sde is k-diffusion's form, which never lowers the order (issue 13: defaults follow the reference).
    assert len(lof) >= 16 and all(SOLVERS[n].options()["lower_order_final"] is (n != "dpmpp_3m_sde") for n in lof)
    assert SOLVERS["dpm_solver_v3"].options()["ems"] == "auto"


@pytest.mark.parametrize("name, options, right", [
    ("unipc_bh2", {"afs": True}, "use solver=unipc_bh2_afs"),
    ("unipc_bh2", {"max_order": 2, "variant": "bh1"}, "use solver=unipc_bh1_o2"),
    ("dpmpp_3m", {"coefficients": "taylor"}, "use solver=dpmpp_3m_taylor"),
    ("dpm_solver_3m", {"coefficients": "taylor"}, "use solver=dpm_solver_3m_taylor"),
    ("deis_3", {"max_order": 2}, "use solver=deis_2"),
    ("ipndm", {"afs": True}, "use solver=ipndm_afs"),
    ("unipc_bh2", {"variant": "bh3"}, "no registered solver runs that"),
])
def test_a_name_fixes_its_algorithm(name, options, right):
    with pytest.raises(UsageError, match=right):
        SOLVERS[name].bind(options)


def test_continuous_knobs_stay_settable():
    assert SOLVERS["ddim"].bind({"eta": 0.5})["eta"] == 0.5
    assert SOLVERS["unipc_bh2"].bind({"lower_order_final": False, "corrector": False})["corrector"] is False
    assert "eta" not in SOLVERS["ddpm"].fixed() and SOLVERS["unipc_bh2"].fixed() == {"max_order": 3, "variant": "bh2",
                                                                                         "afs": False}


@pytest.mark.parametrize("overrides, message", [
    (["solver=dpmpp_2m", "solver.lower_order_final=maybe"],
     "solver.lower_order_final=maybe: Value 'maybe' is not a valid bool"),
    (["solver=ddim", "solver.eta=abc"], "solver.eta=abc: Value 'abc' of type 'str' could not be converted to Float"),
    (["solver=ddim", "solver.eta=[1,2]"], "solver.eta=[1,2]: Value '[1, 2]' of type 'list'"),
    (["steps.rho=abc"], "steps.rho=abc: Value 'abc'"),
    (["tf32=abc"], "tf32=abc: Value 'abc' is not a valid bool"),
    (["solver=ddim", "solver.eta=-1"], "solver.eta and solver.s_noise must be >= 0"),
    (["solver=dpmpp_2m", "solver.eta=nan"], "solver.eta must be >= 0 (got nan)"),
    (["solver=euler", "solver.s_churn=-1"], "solver.s_churn must be >= 0"),
    (["solver=ipndm", "solver.max_order=100"], "solver.max_order must be 1, 2, 3 or 4"),
    (["solver=dpm_solver_v3", "solver.order=0"], "solver.order must be 1, 2 or 3"),
    (["solver=unipc_bh2", "solver.afs=true"], "use solver=unipc_bh2_afs"),
    (["steps.rho=inf"], "steps.rho must be a finite number > 0"),
    (["steps=explicit", "steps.sigmas=[80,1,1,0]"], "steps.sigmas must be strictly decreasing"),
])
def test_bad_option_values_stop_before_anything_runs(tmp_path, capsys, overrides, message):
    """One line on stderr, exit 2, nothing written: no 'failed' row (the solver's own checks run at plan time)."""
    out = tmp_path / "out"
    assert main(["sweep", *TINY, "solver=euler", "nfe=4", f"out={out}", "--quiet", "--no-report", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_user_config_folder_adds_and_overrides(tmp_path, monkeypatch, capsys):
    """--config-dir folders come first: a new model option and a replaced sweep file; packaged ones still resolve."""
    monkeypatch.setenv(CONFIG_PATH_ENV, "")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("kind: gaussian\nshape: [3]\nstd: 0.25\n")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "default.yaml").write_text("params:\n  solver: heun\n  nfe: 5\nnfe_policy: exact\n")
    assert main(["--config-dir", str(tmp_path), "sweep", "model=mine", "metrics=error_only", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "heun" in listed and "euler" not in listed
    cfg = compose(["model=mine", "solver=unipc_bh2"])
    assert (cfg.model.std, cfg.sweep.nfe_policy, cfg.solver.variant) == (0.25, "exact", "bh2")
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="is not a folder"):
        compose()


def _recording(calls: dict, name: str, fn):
    """fn, recording the options of its sampling calls (not plan-time dry runs) under `name`."""

    @functools.wraps(fn)
    def spy(denoiser, x, sigmas, *, noise=None, **options):
        if isinstance(denoiser, CountingDenoiser):
            calls[name] = _plain(options)
        return fn(denoiser, x, sigmas, noise=noise, **options)

    return spy


def _row_options(row: pd.Series) -> dict:
    """The solver.* columns a row holds (other solvers' columns are empty; lists are stored as JSON text)."""
    values = {k.removeprefix("solver."): v for k, v in row.items() if k.startswith("solver.") and k != "solver.name"}
    present = {k: v for k, v in values.items() if not (v is None or (isinstance(v, float) and math.isnan(v)))}
    return {k: json.loads(v) if isinstance(v, str) and v.startswith("[") else v for k, v in present.items()}


@pytest.mark.slow
def test_listed_composed_run_and_recorded_options_agree(tmp_path, monkeypatch, capsys):
    """For every registered solver: `list solvers --json` == composed `solver` node == options the function
    ran with == the row's solver.* columns (one tiny sweep over all solvers; ~25 s on 2 busy cores)."""
    assert main(["list", "solvers", "--json"]) == 0
    listed = {r["solver"]: r["options"] for r in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(SOLVERS)
    typed_nodes()
    calls: dict[str, dict] = {}
    for name, spec in list(SOLVERS.items()):
        monkeypatch.setitem(SOLVERS, name, replace(spec, fn=_recording(calls, name, spec.fn)))
    out = tmp_path / "out"
    args = [*TINY, "metrics.names=[]", f"solver={','.join(sorted(SOLVERS))}", "nfe=20", "n_samples=1", "batch_size=1",
            f"out={out}", f"cache_dir={tmp_path / 'cache'}"]
    composed = {p.cfg.solver.name: {k: v for k, v in to_dict(p.cfg.solver).items() if k != "name"}
                for p in prepare(args)}
    assert main(["sweep", *args, "--quiet", "--no-report"]) == 0
    rows = pd.read_parquet(out / "results.parquet").set_index("solver.name")
    for name in SOLVERS:
        assert rows.loc[name, "status"] == "ok", rows.loc[name, "reason"]
        assert listed[name] == composed[name] == calls[name] == _row_options(rows.loc[name]), name
