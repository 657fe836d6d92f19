#!/usr/bin/env bash
# The project's CI, and the README's test command: install, run the tests, then run the embedded
# default sweep and check its quality numbers against the committed baseline (exit 1 on a regression).
#   bash scripts/ci.sh            # everything
#   SKIP_SWEEP_CHECK=1 bash scripts/ci.sh   # install + tests only
set -uo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[test]' || exit $?

python3 -m pytest -q
rc=$?
# pytest exits 5 when it collected no tests: that is not a failure of the install.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi
[ "$rc" -eq 0 ] || exit "$rc"
[ -n "${SKIP_SWEEP_CHECK:-}" ] && exit 0

# The default sweep into a scratch folder (its reference solutions are cached as usual), then the check.
out=$(mktemp -d "${TMPDIR:-/tmp}/diffbench-ci.XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "== diffbench sweep (embedded default) into $out"
python3 -m diffbench.cli sweep out="$out" --quiet --no-report || exit $?
echo "== diffbench check against results/baseline.parquet"
python3 -m diffbench.cli check "$out" --baseline results/baseline.parquet
