#!/bin/sh
# WATCHD_CMD for bench/compare.sh: starts the watchd of the tree that the harness's peer spec
# names (watchd:tree=base or watchd:tree=head), so that both trees run as two peers of ONE
# harness run, interleaved per repetition. The adapter passes only $WATCHD_CMD to the daemon, so
# the choice is read from the peer spec on the command line of the consumer that starts us.
set -eu
spec=$(tr '\0' '\n' < "/proc/$PPID/cmdline" | grep '^watchd:' | head -n 1)
tree=$(echo "$spec" | sed -n 's/^watchd:\(.*,\)\{0,1\}tree=\([a-z]*\).*$/\2/p')
# bench/compare.sh --frames: the spec holds `batch` (one option per spec), spelled 1 for the base
# and true for the head, both of which the harness's adapter takes as "ask for frames".
if [ -z "$tree" ]; then
    case $(echo "$spec" | sed -n 's/^watchd:\(.*,\)\{0,1\}batch=\([a-z0-9]*\).*$/\2/p') in
        1) tree=base ;;
        true) tree=head ;;
    esac
fi
case $tree in
    base) dir=${WATCHD_COMPARE_BASE:?set by bench/compare.sh} ;;
    head) dir=${WATCHD_COMPARE_HEAD:?set by bench/compare.sh} ;;
    *) echo "tree-cmd.sh: no watchd:tree=base|head (or watchd:batch=1|true) in the peer spec of process $PPID" >&2; exit 2 ;;
esac
# The daemon starts its watcher with `python -m watchd.watcher`, which imports from the current
# directory first: run inside the tree so that each side's watcher is its own.
cd "$dir"
exec "$dir/.venv/bin/watchd" "$@"
