#!/bin/sh
# Runs the shared peer harness (inotifywait, watchman, watchdog, a raw Python reader) and watchd
# from this checkout on the same workloads, in one run, so that ratios between them are meaningful.
#   bench/peers.sh                                   # every peer, every workload, 3 repetitions
#   bench/peers.sh inotifywait watchd -- --workloads W1,W6 --reps 3
# The harness lives beside the repository (../shared/bench, or $WATCHD_PEER_BENCH).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
harness=${WATCHD_PEER_BENCH:-$here/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "peer harness not found at $harness (set WATCHD_PEER_BENCH)" >&2; exit 1; }
[ -x "$here/.venv/bin/watchd" ] || { echo "run scripts/dev or scripts/test once to create .venv" >&2; exit 1; }
export WATCHD_CMD="$here/.venv/bin/watchd --config {config}"
if [ $# -eq 0 ]; then
    set -- inotifywait watchman watchdog raw watchd
fi
exec "$harness/run.sh" "$@"
