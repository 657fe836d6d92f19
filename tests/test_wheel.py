"""A built wheel carries its configs: installed in a fresh venv, it lists solvers and runs a sweep with no checkout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_install_runs_without_a_checkout(tmp_path):
    """pip wheel (no isolation: offline) -> fresh venv (--system-site-packages for torch & co, --no-deps) -> run
    from an unrelated folder; the package imported is the venv's, its configs are the packaged ones."""
    src = tmp_path / "src"  # a copy: building in place would leave build/ and egg-info in the checkout
    shutil.copytree(REPO / "diffbench", src / "diffbench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DIFFBENCH_CONFIG_DIR", "DIFFBENCH_CONFIG_PATH")}
    env["DIFFBENCH_CACHE"] = str(tmp_path / "cache")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("diffbench-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path, env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(venv / "bin" / "python"), "-c", "import diffbench.config as c; print(c.config_dir())"],
                 elsewhere, env)
    assert where.strip().startswith(str(venv)), where
    listed = _run([str(venv / "bin" / "diffbench"), "list", "solvers", "--json"], elsewhere, env)
    assert '"unipc_bh2_afs"' in listed
    _run([str(venv / "bin" / "diffbench"), "sweep", "debug=default", "metrics=error_only", "nfe=3", "out=runs/smoke",
          "--quiet", "--no-report"], elsewhere, env)
    assert (elsewhere / "runs" / "smoke" / "results.parquet").is_file()
