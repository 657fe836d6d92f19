"""diffbench/solvers/upstream.py agrees with the parity matrix and covers every registered solver."""
from __future__ import annotations

import json
from pathlib import Path

from diffbench.solvers import SOLVERS
from diffbench.solvers.upstream import UPSTREAM
from tests.helpers.cli import run_cli
from tests.helpers.parity_matrix import DIFFERENT, K_CASES, K_DIFFERENT, K_SINGLESTEP, MATCHING

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_solver_has_a_reference_entry():
    assert set(UPSTREAM) == set(SOLVERS)
    assert all(r.status in ("parity", "differs", "none") for r in UPSTREAM.values())
    assert all(r.note for r in UPSTREAM.values() if r.status != "parity")


def test_parity_status_is_exactly_the_matrix():
    """A solver is marked "parity" iff a parity case runs it; documented differences are "differs"."""
    in_matrix = set(MATCHING) | set(K_CASES) | set(K_SINGLESTEP)
    separate = {n: r.note for n, r in UPSTREAM.items() if r.status == "parity" and r.note.startswith("tests/")}
    for name, test_file in separate.items():  # compared in their family's own test file
        assert name in (ROOT / test_file).read_text(), f"{test_file} does not test {name}"
    assert {n for n, r in UPSTREAM.items() if r.status == "parity"} == in_matrix | set(separate)
    assert all(UPSTREAM[n].status == "differs" for n in {**DIFFERENT, **K_DIFFERENT})


def _list(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, "list", *args)


def test_list_solvers_details_fit_80_columns_and_name_references(capsys):
    code, out, _ = _list(capsys, "solvers", "--details")
    assert code == 0 and all(len(line) <= 80 for line in out.splitlines())
    block = out.split("\n\n")[[b.split()[0] for b in out.split("\n\n")].index("dpmpp_3m_sde")]
    assert "k-diffusion 0.1.1 sample_dpmpp_3m_sde" in block and "<= 1e-10" in block and "Lu et al. 2022b" in block
    assert sum(b.split()[0] in SOLVERS for b in out.split("\n\n")) == len(SOLVERS)


def test_list_solvers_json_carries_reference_and_parity(capsys):
    code, out, _ = _list(capsys, "solvers", "--json")
    rows = {row["solver"]: row for row in json.loads(out)}
    assert code == 0 and rows["plms"]["reference"].startswith("diffusers 0.42 PNDMScheduler")
    assert rows["s_pndm"]["parity"].startswith("no counterpart")


def test_details_is_for_solvers_only(capsys):
    code, _, err = _list(capsys, "models", "--details")
    assert code == 2 and "--details lists solvers only" in err
