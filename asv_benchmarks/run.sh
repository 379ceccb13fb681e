#!/usr/bin/env bash
# The stored asv workflow: benchmarks of the checked-out commit, in the current Python
# environment (no per-commit virtualenvs), results kept under asv_benchmarks/.asv/results.
#
#   asv_benchmarks/run.sh [extra asv run arguments, e.g. -b SingularValues]
#
# CONVSV_BENCH_SIZE=small (default) keeps it under ~10 minutes on 2 cores; =full adds the
# papers' sizes. ASV_REPEAT (default 3) timing samples per parameter set.
set -euo pipefail
cd "$(dirname "$0")"
root=$(git rev-parse --show-toplevel)
export CONVSV_BENCH_SIZE="${CONVSV_BENCH_SIZE:-small}"
# convsv importable whether or not it is installed in this environment
export ASV_PYTHONPATH="$root${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"  # asv drops PYTHONPATH
# machine file (~/.asv-machine.json): written once, from this machine's facts
[ -f "${ASV_MACHINE_FILE:-$HOME/.asv-machine.json}" ] || asv machine --yes
start=$(date +%s)
# --python=same stores results only with --set-commit-hash; --quick would store nothing.
# forkserver: one import of the suite, then a fork per parameter set (the default spawns a
# fresh interpreter for each of ~150 sets, which alone took over 10 minutes on a busy VM).
asv run --python=same --set-commit-hash "$(git rev-parse HEAD)" \
    --launch-method=forkserver -a repeat="${ASV_REPEAT:-3}" -a rounds=1 -a warmup_time=0.05 \
    --durations=5 --show-stderr "$@"
echo "asv ($CONVSV_BENCH_SIZE) finished in $(( $(date +%s) - start )) s; results in" \
     "asv_benchmarks/.asv/results/"
