"""`diffbench sweep`, `sample` and `list` on discrete samplers: tidy rows, batch-size invariance, `check`, bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffbench import columns as col
from diffbench import regression
from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.sampling import make_plan, sample_tokens
from diffbench.engine.points import prepare
from diffbench.engine.sweep import run_sweep
from diffbench.errors import UsageError
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER_AXIS = "solver=mdlm_ancestral_cache,first_hitting"


def args(root, cache, *extra: str) -> list[str]:
    """A small discrete sweep on the exact chain (64 samples); `extra` picks samplers and NFE."""
    return ["experiment=discrete_markov", "n_samples=64", "batch_size=32", "metrics.n_boot=10", f"out={root}",
            f"cache_dir={cache}", *extra]


def by_point(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index([col.SOLVER, col.NFE_BUDGET]).sort_index()


def test_sweep_writes_tidy_rows_that_check_reads(tmp_path, sweep_cache):
    first = run_sweep(args(tmp_path / "a", sweep_cache, SAMPLER_AXIS, "nfe=4,8"), progress=False)
    assert (first.ran, first.failed) == (4, 1)  # first_hitting has no valid NFE <= 4 at length 5
    df = by_point(first.frame())
    assert df.loc[("first_hitting", 4), col.STATUS] == col.FAILED
    assert (df.loc[("first_hitting", 8), col.NFE], df.loc[("first_hitting", 8), col.NFE_MEASURED]) == (5, 5.0)
    cached = df.loc[("mdlm_ancestral_cache", 8)]
    assert cached[col.NFE_MEASURED] < 8 and pd.isna(cached[col.NFE_DECLARED]) and cached[col.N_STEPS] == 8
    ok = df[df[col.STATUS] == col.OK]
    assert (ok["tv_lo"] <= ok["tv"]).all() and (ok["tv"] <= ok["tv_hi"]).all()
    other = run_sweep(args(tmp_path / "b", sweep_cache, SAMPLER_AXIS, "nfe=8", "batch_size=64"), progress=False).frame()
    pd.testing.assert_series_equal(df.loc[by_point(other).index, "kl"], by_point(other)["kl"])  # same samples
    verdicts = regression.compare(other, first.frame())["verdict"].value_counts().to_dict()
    assert verdicts == {"ok": 2 * 5, "skipped": 5}  # `check` on the shared points, same-seed rule


@pytest.mark.parametrize("extra, message", [
    (["solver=tau_leaping", "steps=karras"], "steps=linear_mask"),
    (["solver=tau_leaping", "metrics=default"], "do not apply to discrete models"),
    (["solver=euler"], "discrete sampler 'euler' is unknown"),
    (["solver=remdm", "solver.eta=3"], "eta"),
    (["solver=mdlm_ancestral", "solver.precision=float16"], "precision"),
    (["solver=tau_leaping", "model.length=9", "metrics.names=[tv]"], "enumerable"),
])
def test_bad_discrete_input_is_one_usage_error(tmp_path, sweep_cache, extra, message):
    with pytest.raises(UsageError, match=message):
        prepare(args(tmp_path, sweep_cache, "nfe=4", *extra))


def test_sample_command_saves_tokens_and_their_exact_quality(tmp_path, capsys):
    """`diffbench sample` on a discrete sampler: the sweep's tokens for those indices, its passes, NLL in --json."""
    chain = make_model("markov_chain", {"vocab": 4, "length": 5})
    path, summary = tmp_path / "fhs.npz", tmp_path / "fhs.json"
    code, printed, _ = run_cli(capsys, "sample", "experiment=discrete_markov", "solver=first_hitting", "nfe=5",
                               "batch_size=3", "--seeds", "4-11", "-o", str(path), "--json", str(summary),
                               f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert code == 0 and "NFE measured 5 per sample" in printed
    saved, values = np.load(path), json.loads(summary.read_text())
    expected = sample_tokens(chain, make_plan(SAMPLERS["first_hitting"], 5, 5), range(4, 12), seed=0).tokens
    np.testing.assert_array_equal(saved["tokens"], expected.numpy())  # batch size 3 vs 8: same samples
    assert saved["passes"].tolist() == [5] * 8 and values["nfe_measured"] == 5.0 and values["n"] == 8
    assert values["nll"] == pytest.approx(float(-chain.log_prob(expected).mean()))
    assert values["entropy_true"] == pytest.approx(chain.entropy())


def test_sample_command_refuses_a_bad_json_path_before_sampling(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "sample", "experiment=discrete_markov", "solver=first_hitting", "nfe=5",
                           "--json", str(blocker / "x.json"), f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'c'}")
    assert code == 2 and "--json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_list_discrete_names_every_sampler_with_its_nfe_rule(capsys):
    code, printed, _ = run_cli(capsys, "list", "discrete", "--json")
    rows = {row["sampler"]: row for row in json.loads(printed)}
    assert code == 0 and set(rows) == set(SAMPLERS)
    assert rows["first_hitting"]["NFE"].startswith("= L") and rows["mdlm_ancestral_cache"]["NFE"].startswith("adaptive")
    assert rows["remdm"]["options"] == {"precision": "float64", "eta": 0.05}
    assert "Zheng" in rows["first_hitting"]["paper"]
