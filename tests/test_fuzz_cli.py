"""Fuzzing the command line in-process with malformed input (hypothesis).

Every case must end like DESIGN.md "Errors" says: exit code 2, one line on stderr, no traceback,
and nothing written to the run's out folder. Examples are derandomized (the same ones every run)
and few, so the file stays fast and never flaky.
"""
from __future__ import annotations

import io
import itertools
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from diffbench import results
from diffbench.cli import main
from diffbench.config import CONFIG_ENV, MAX_NFE, MAX_SAMPLES, compose, config_dir, flatten, group_options, to_dict
from diffbench.engine.points import NFE_POLICIES

# No shrinking: a failing example is reported as drawn (each one runs a command, shrinking would take minutes).
FUZZ = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
COMMANDS = ("sweep", "sample")
RESERVED = {"null", "none", "true", "false", "auto", "inf", "nan"}  # words Hydra/OmegaConf read as values
GROUPS = ("model", "solver", "steps", "dataset", "metrics", "experiment", "debug")
KNOWN = set(flatten(to_dict(compose(["debug=default"]))))

words = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(lambda w: w not in RESERVED)
non_positive = st.integers(max_value=0).map(str)
fractions = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: v != int(v)).map(repr)
too_large = {key: st.integers(min_value=limit + 1, max_value=10**15).map(str)
             for key, limit in (("nfe", MAX_NFE), ("n_samples", MAX_SAMPLES))}
BAD_VALUES = {
    "nfe": st.one_of(non_positive, fractions, words, too_large["nfe"]),
    "n_samples": st.one_of(non_positive, fractions, words, too_large["n_samples"]),
    "tf32": words.filter(lambda w: w not in ("yes", "no", "on", "off")),
    "metrics.reference.solver": words,
    "metrics.reference.rtol": words,
    "batch_size": st.one_of(non_positive, fractions, words),
    "seed": st.one_of(st.integers(max_value=-1).map(str), fractions, words),
    "dtype": words.filter(lambda w: w not in ("float32", "float64")),
    "device": words.filter(lambda w: w != "cpu"),
    "steps.sigma_min": st.one_of(st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr), words),
    "steps.sigma_max": st.one_of(st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr), words),
    "sweep.nfe_policy": words.filter(lambda w: w not in NFE_POLICIES),
    "metrics.n_boot": st.one_of(st.integers(max_value=-1).map(str), st.just("1"), words),
    "metrics.ci_level": st.one_of(st.floats(min_value=1, allow_nan=False, allow_infinity=False).map(repr),
                                  st.floats(max_value=0, allow_nan=False, allow_infinity=False).map(repr), words),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A scratch folder and cache shared by the examples (each example uses its own out folder)."""
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFBENCH_CACHE", str(root / "cache"))
        yield root


_counter = itertools.count()


def _fresh(work: Path) -> Path:
    """A folder name no example used yet (it must not exist after a failing command)."""
    return work / f"out{next(_counter)}"


def _fails_cleanly(argv: list[str], out_dir: Path) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(argv)
    err = stderr.getvalue()
    assert code == 2, (argv, code, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
    assert "Traceback" not in err + stdout.getvalue(), argv
    assert not out_dir.exists(), (argv, sorted(p.name for p in out_dir.rglob("*")))


def _run_args(command: str, out_dir: Path, *overrides: str) -> list[str]:
    return [command, "debug=default", *overrides, f"out={out_dir}", "--quiet"]


# Overrides --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_empty_out_is_rejected(work, command, monkeypatch):
    monkeypatch.chdir(work)
    before = sorted(p.name for p in work.iterdir())
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert main([command, "debug=default", "out=", "--quiet"]) == 2
    assert stderr.getvalue().startswith("error: out is empty") and sorted(p.name for p in work.iterdir()) == before


@FUZZ
@given(command=st.sampled_from(COMMANDS), key=st.one_of(words, st.tuples(st.sampled_from(GROUPS), words).map(".".join)),
       value=st.one_of(words, st.integers().map(str)))
def test_unknown_override_keys(work, command, key, value):
    assume(key not in KNOWN and key not in GROUPS)
    out = _fresh(work)
    _fails_cleanly(_run_args(command, out, f"{key}={value}"), out)


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
@FUZZ
@given(command=st.sampled_from(COMMANDS), field_value=st.sampled_from(sorted(BAD_VALUES)).flatmap(
    lambda f: st.tuples(st.just(f), BAD_VALUES[f])))
def test_bad_types_and_non_positive_numbers(work, command, field_value):
    field, value = field_value
    out = _fresh(work)
    _fails_cleanly(_run_args(command, out, f"{field}={value}"), out)


@FUZZ
@given(command=st.sampled_from(COMMANDS), group=st.sampled_from(GROUPS), name=words)
def test_unknown_group_options_such_as_solver_names(work, command, group, name):
    assume(name not in group_options(group))
    out = _fresh(work)
    _fails_cleanly(_run_args(command, out, f"{group}={name}"), out)


@FUZZ
@given(text=st.text(max_size=12))
def test_bad_shard_strings(work, text):
    assume(not _valid_shard(text))
    out = _fresh(work)
    _fails_cleanly(["sweep", "--shard", text, *_run_args("sweep", out)[1:]], out)


def _valid_shard(text: str) -> bool:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        return False
    return 0 <= index < count


@FUZZ
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_garbage_override_syntax(work, text):
    # With "=" it might be a valid override, with a leading -, + or ~ an option or a Hydra append/delete.
    assume("=" not in text and not text.lstrip().startswith(("+", "~", "-")))
    out = _fresh(work)
    _fails_cleanly(_run_args("sweep", out, text), out)


# Paths and files -------------------------------------------------------------------------------------

@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
@FUZZ
@given(case=st.sampled_from(["eval", "check", "plot", "report", "sample_suffix", "sample_under_file",
                             "sweep_under_file", "update_under_file", "eval_garbage_npz", "eval_garbage_npy",
                             "eval_json_is_folder", "eval_json_under_file", "ref_json_under_file"]), name=words)
def test_bad_paths(work, case, name):
    out = _fresh(work)
    missing, a_file = work / "missing" / name, work / "a_file"
    a_file.write_text("not a folder")
    garbage = work / f"garbage_{name}"
    for suffix in (".npz", ".npy"):
        garbage.with_suffix(suffix).write_bytes(name.encode() * 3)
    json_under_file = ["--json", str(a_file / f"{name}.json")]
    argv = {"eval": ["eval", f"{missing}.npz", "debug=default", f"out={out}"],
            "eval_garbage_npz": ["eval", str(garbage.with_suffix(".npz")), "debug=default", f"out={out}"],
            "eval_garbage_npy": ["eval", str(garbage.with_suffix(".npy")), "debug=default", f"out={out}"],
            "eval_json_is_folder": ["eval", str(garbage.with_suffix(".npz")), "debug=default", "--json", str(work)],
            "eval_json_under_file": ["eval", str(garbage.with_suffix(".npz")), "debug=default", *json_under_file],
            "ref_json_under_file": ["ref", "debug=default", f"cache_dir={out}", *json_under_file],
            "check": ["check", str(missing), "--baseline", str(out)],
            "plot": ["plot", str(missing), "--out", str(out)],
            "report": ["report", str(missing), "--out", str(out)],
            "sample_suffix": _run_args("sample", out, "-o", str(out / f"{name}.txt")),
            "sample_under_file": _run_args("sample", out, "-o", str(a_file / f"{name}.npz")),
            "sweep_under_file": _run_args("sweep", a_file / name),
            "update_under_file": ["check", str(_good_table(work)), "--baseline", str(a_file / f"{name}.parquet"),
                                  "--update"]}[case]
    _fails_cleanly(argv, out)
    assert a_file.read_text() == "not a folder"


BROKEN_YAML = (
    "{k}: [{v}",            # unclosed flow sequence
    "{k}: {{{v}",           # unclosed flow mapping
    "{k}: '{v}",            # unterminated quote
    "{k}: {v}: {v}",        # mapping value where none may be
    "\t{k}: {v}",           # tab indentation
    "- {v}\n{k}: {v}",      # a sequence, then a mapping
    "{k}:\n  - {v}\n {k}: {v}",  # bad indentation
    "dtype: {v}",           # well-formed, but a word where a dtype name belongs
    "{v}",                  # a scalar document where a mapping belongs
)


@pytest.fixture(scope="module")
def configs_copy(tmp_path_factory):
    """A copy of the configs folder, so malformed files can be added to it."""
    root = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(config_dir(), root)
    return root


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
@FUZZ
@given(template=st.sampled_from(BROKEN_YAML), key=words, value=words, group=st.sampled_from(("experiment", "solver")))
def test_malformed_yaml_config_files(work, configs_copy, template, key, value, group):
    name = f"fuzz{next(_counter)}"
    text = template.format(k=key, v=value)
    if group == "experiment":
        text = "# @package _global_\n" + text
    (configs_copy / group).mkdir(exist_ok=True)  # solver nodes are typed registry nodes: the folder may be absent
    (configs_copy / group / f"{name}.yaml").write_text(text)
    out = _fresh(work)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CONFIG_ENV, str(configs_copy))
        _fails_cleanly(_run_args("sweep", out, f"{group}={name}"), out)


def _good_table(work: Path) -> Path:
    """A small well-formed results table (the other side of a comparison with garbage)."""
    path = work / "good" / results.TABLE_NAME
    if not path.is_file():
        row = {"config_hash": "GOOD", "point_hash": "GOOD", "status": "ok", "solver.name": "euler", "nfe_measured": 4,
               **results.metric_row({"fd": results.MetricValue(1.0, 0.9, 1.1)})}
        results.write_table(path, pd.DataFrame([row]))
    return path


COLUMNS = ("config_hash", "point_hash", "status", "reason", "nfe_measured", "metric_names", "fd", "fd_lo", "fd_hi",
           "time_sampling_s", "samples_path", "solver.name")
cells = st.one_of(words, st.integers().map(str), st.floats(allow_nan=False).map(repr), st.just(""),
                  st.just('["fd"'), st.just("ok"))


@st.composite
def garbage_tables(draw) -> tuple[str, bytes]:
    """(suffix, content): random bytes, or a CSV of random cells whose metric_names never parse."""
    if draw(st.booleans()):
        return draw(st.sampled_from((".parquet", ".csv"))), draw(st.binary(max_size=64))
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6, unique=True))
    rows = draw(st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), max_size=4))
    df = pd.DataFrame(rows, columns=columns)
    if "metric_names" in df.columns:
        df["metric_names"] = "[fd"  # never valid JSON: the table cannot be a real one
    elif "status" in df.columns:
        df["status"] = "failed"
    return ".csv", df.to_csv(index=False).encode()


@FUZZ
@given(command=st.sampled_from(("check", "check_baseline", "plot", "report")), table=garbage_tables())
def test_garbage_results_files(work, command, table):
    suffix, content = table
    garbage = work / f"garbage{next(_counter)}{suffix}"
    garbage.write_bytes(content)
    out = _fresh(work)
    _fails_cleanly(_table_argv(command, garbage, _good_table(work), out), out)


def _table_argv(command: str, bad: Path, good: Path, out: Path) -> list[str]:
    """A command given a bad table (as the baseline for check_baseline) and a good one where it needs two."""
    return {"check": ["check", str(bad), "--baseline", str(good)],
            "check_baseline": ["check", str(good), "--baseline", str(bad)],
            "plot": ["plot", str(bad), "--out", str(out)],
            "report": ["report", str(bad), "--out", str(out)]}[command]


@FUZZ
@given(command=st.sampled_from(("check", "check_baseline", "plot", "report")),
       shape=st.sampled_from(("no status", "repeated key", "text in a metric")), word=words)
def test_well_formed_tables_of_the_wrong_shape(work, command, shape, word):
    good = results.read_table(_good_table(work))
    df = {"no status": good.drop(columns="status"), "repeated key": pd.concat([good, good]),
          "text in a metric": good.assign(fd=word)}[shape]
    bad = work / f"shape{next(_counter)}.csv"
    df.to_csv(bad, index=False)
    out = _fresh(work)
    _fails_cleanly(_table_argv(command, bad, _good_table(work), out), out)


def test_the_fuzzed_good_table_is_accepted(work):
    """The garbage tests' other side is a real table: check against itself passes."""
    good = str(_good_table(work))
    assert main(["check", good, "--baseline", good]) == 0
    assert np.isfinite(results.read_table(good)["fd"]).all()


def test_unquoted_paths_with_spaces_say_how_to_quote(work):
    out = work / "with space ü"
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert main(["sweep", "debug=default", f"out={out}", "--dry-run"]) == 2
    assert f"\"out='{out}'\"" in stderr.getvalue() and not out.exists()


def test_quoted_paths_with_spaces_and_non_ascii_work(work):
    out = work / "with space ü"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(["sweep", "debug=default", "metrics=error_only", "solver=euler", "nfe=3", f"out='{out}'",
                     "--quiet", "--no-report"]) == 0
    assert (out / "results.parquet").is_file()


def test_additions_of_unknown_fields_warn_once(work):
    stderr = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(stderr):
        assert main(["sweep", "debug=default", "+not_a_field=1", f"out={_fresh(work)}", "--dry-run"]) == 0
    assert stderr.getvalue().count("warning: +not_a_field=1: adds a field") == 1
