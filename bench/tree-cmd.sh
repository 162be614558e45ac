#!/bin/sh
# WATCHD_CMD for bench/compare.sh: starts the watchd of the tree that the harness's peer spec
# names (watchd:tree=base or watchd:tree=head), so that both trees run as two peers of ONE
# harness run, interleaved per repetition. The adapter passes only $WATCHD_CMD to the daemon, so
# the choice is read from the peer spec on the command line of the consumer that starts us.
set -eu
tree=$(tr '\0' '\n' < "/proc/$PPID/cmdline" | sed -n 's/^watchd:\(.*,\)\{0,1\}tree=\([a-z]*\).*$/\2/p' | head -n 1)
case $tree in
    base) dir=${WATCHD_COMPARE_BASE:?set by bench/compare.sh} ;;
    head) dir=${WATCHD_COMPARE_HEAD:?set by bench/compare.sh} ;;
    *) echo "tree-cmd.sh: no watchd:tree=base|head in the peer spec of process $PPID" >&2; exit 2 ;;
esac
# The daemon starts its watcher with `python -m watchd.watcher`, which imports from the current
# directory first: run inside the tree so that each side's watcher is its own.
cd "$dir"
exec "$dir/.venv/bin/watchd" "$@"
