"""The README as a fresh user meets it: every command of its bash blocks runs (at tiny sizes, in a
scratch folder), the output paths it names exist afterwards, every file it points to is in the
repository, and each command's --help shows its examples one per line."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from diffbench import cli, results
from diffbench.cli import main

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
TINY = ["debug=default"]  # appended to sweep, sample and fit: 16 samples of an 8x8 mixture per point
# Commands that are not run, and why (matched on the start of the command).
SKIPPED = {
    "python3 -m pip install": "installs packages; the test runs in the checkout under test",
    "bash scripts/ci.sh": "runs this test suite itself, then the full-size default sweep",
    "torchrun": "needs several GPUs",
    "diffbench sweep model=diffbench-mnist": "GPU example (device=cuda, 50k samples)",
    "diffbench sweep hydra/launcher=slurm": "needs a SLURM cluster (sbatch)",
    "diffbench reproduce diffbench-baseline": "full size (3 points x 1024 samples); test_reproduce.py runs it (slow)",
}


def readme_commands() -> list[str]:
    """Each command of the README's ```bash blocks: continuation lines joined, `a && b` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def _argv(command: str) -> list[str]:
    """The arguments of a diffbench command (comments dropped), made tiny where it samples."""
    words = shlex.split(command, comments=True)
    assert words[0] == "diffbench", f"README command not run by this test and not in SKIPPED: {command}"
    return words[1:] + (TINY if words[1] in ("sweep", "sample", "fit") else [])


def test_readme_names_no_file_outside_the_repository_and_every_file_it_names_exists():
    assert "../" not in README
    linked = re.findall(r"\]\(([^)#]+)\)", README)
    quoted = re.findall(r"`((?:diffbench|results|scripts|configs|docs|tests)/[\w./-]+)`", README)
    missing = [p for p in linked + quoted if "*" not in p and not (REPO / p).exists()]
    assert linked and quoted and not missing, missing


@pytest.mark.slow
def test_every_readme_command_runs_at_tiny_size(tmp_path, monkeypatch, capsys):
    """A fresh clone's walkthrough: each command in order, in a scratch folder, exit code 0."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path / "cache"))
    # The scratch baseline is the embedded default grid at the same tiny size (the committed one is full-size).
    assert main(["sweep", *TINY, "out=baseline_run", "--quiet", "--no-report"]) == 0
    results.write_table(Path("results/baseline.parquet"), results.read_table("baseline_run"))
    ran = []
    for command in readme_commands():
        if any(command.startswith(prefix) for prefix in SKIPPED):
            continue
        code = main(_argv(command))
        assert code == 0, f"{command}: exit {code}\n{capsys.readouterr().err}"
        ran.append(command)
    assert len(ran) >= 12
    # The output paths the README promises for the default sweep.
    promised = re.search(r"land in `runs/default/`: (.*?)\.\n\n", README, re.DOTALL).group(1)
    for name in re.findall(r"`([^`]+)`", promised):
        assert (tmp_path / "runs" / "default" / name).exists(), name
    assert (tmp_path / "runs/mine/report/report.html").is_file() and (tmp_path / "runs/mine/figures").is_dir()


def _examples(doc: str) -> list[str]:
    return [line.strip() for line in doc.splitlines() if line.strip().startswith(("diffbench ", "torchrun "))]


@pytest.mark.parametrize("name", sorted(c.name for c in typer.main.get_command(cli.app).commands.values()))
def test_help_shows_each_example_on_its_own_line(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    command = typer.main.get_command(cli.app).commands[name]
    examples = _examples(command.help or "")
    assert examples, f"{name} --help has no examples"
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    lines = [line.strip() for line in text.splitlines()]
    assert all(example in lines for example in examples), (examples, lines)
    if any(p.name == "out_dir" for p in command.params):  # the real default, not an empty "/figures"
        assert re.search(r"default: <table dir>/(figures|report)\)", text)
