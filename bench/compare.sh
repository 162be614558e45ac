#!/bin/sh
# Before/after in one run: the working tree of this checkout ("head") against a base commit, on
# the peer harness's workloads W1, W2, W5, W6 and on the soak, then a table of head/base ratios.
#   bench/compare.sh main                                  # 3 repetitions, soak 2 min each
#   bench/compare.sh --soak-minutes 0.5 HEAD~3 -- --reps 1 --quick
#   bench/compare.sh --ref inotifywait main                # a third peer in every repetition
#   bench/compare.sh --frames --soak-minutes 0 main -- --workloads W5   # both asking for frames
# The base gets a temporary git worktree with its own .venv (scripts/venv.sh), removed at exit.
# Both trees are peers of the peer harness (watchd:tree=base, watchd:tree=head; bench/tree-cmd.sh
# starts the right daemon): one harness run per repetition, in which every workload runs base and
# head back to back, which goes first alternating. The soak runs each tree's own
# `python -m bench.soak`, base then head. Everything after -- goes to the harness (--reps N is
# the number of repetitions, default 3).
set -eu
usage="usage: bench/compare.sh [--soak-minutes N] [--ref PEER] [--frames] <base-commit> [-- harness options]"
here=$(cd "$(dirname "$0")/.." && pwd)
harness=${WATCHD_PEER_BENCH:-$here/../shared/bench}
soak_minutes=2
ref=""
frames=""
while [ $# -gt 0 ]; do
    case $1 in
        --soak-minutes) soak_minutes=${2:?$usage}; shift 2 ;;
        --ref) ref=${2:?$usage}; shift 2 ;;
        --frames) frames=1; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        --) echo "$usage" >&2; exit 2 ;;
        -*) echo "compare.sh: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
base_ref=$1
shift
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || { echo "$usage" >&2; exit 2; }
    shift
fi
[ -x "$harness/run.sh" ] || { echo "peer harness not found at $harness (set WATCHD_PEER_BENCH)" >&2; exit 1; }
base_sha=$(git -C "$here" rev-parse --verify --quiet "$base_ref^{commit}") \
    || { echo "compare.sh: $base_ref is not a commit of $here" >&2; exit 2; }
head_desc="$(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet HEAD || echo ' + uncommitted changes')"

work=$(mktemp -d /tmp/wd-compare.XXXXXX)
base_dir=$work/base
cleanup() {
    if mountpoint -q "$work/fs" 2>/dev/null; then umount "$work/fs" || true; fi
    git -C "$here" worktree remove --force "$base_dir" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "compare: base $base_ref ($(git -C "$here" rev-parse --short "$base_sha")), head $head_desc"
git -C "$here" worktree add --detach --quiet "$base_dir" "$base_sha"
# Each tree gets its own virtualenv the way scripts/dev makes one; never a copy of another's.
for dir in "$base_dir" "$here"; do
    if ! (cd "$dir" && . "$here/scripts/venv.sh" && ensure_venv "") > "$work/venv.log" 2>&1; then
        cat "$work/venv.log" >&2
        echo "compare.sh: could not set up $dir/.venv" >&2
        exit 1
    fi
done

# The harness's own venv is only needed for the watchdog peer; the stdlib suffices otherwise.
if [ -z "${BENCH_PY:-}" ] && [ ! -x "${BENCH_VENV:-/tmp/benchvenv}/bin/python" ]; then
    BENCH_PY=$(command -v python3)
    export BENCH_PY
fi
# A tmpfs and an output folder of our own: runs by others on this machine use the defaults.
export BENCH_FS="$work/fs" BENCH_OUT="$work/out"
export WATCHD_COMPARE_BASE="$base_dir" WATCHD_COMPARE_HEAD="$here"
export WATCHD_CMD="$here/bench/tree-cmd.sh --config {config}"
results=$work/out/compare.jsonl
log=$work/out/harness.log
mkdir -p "$work/out"
# One harness run per repetition, the two trees swapping places each time: within a run each
# workload runs base and head back to back, and neither always goes first.
reps=3
n=$#
i=0
while [ $i -lt $n ]; do
    arg=$1
    shift
    i=$((i + 1))
    case $arg in
        --reps) reps=${1:?$usage}; shift; i=$((i + 1)) ;;
        --reps=*) reps=${arg#--reps=} ;;
        *) set -- "$@" "$arg" ;;
    esac
done
case $reps in
    ''|*[!0-9]*|0) echo "compare.sh: --reps wants a positive number, got '$reps'" >&2; exit 2 ;;
esac
rep=1
while [ "$rep" -le "$reps" ]; do
    if [ -n "$frames" ]; then base_peer=watchd:batch=1 head_peer=watchd:batch=true
    else base_peer=watchd:tree=base head_peer=watchd:tree=head; fi
    if [ $((rep % 2)) = 1 ]; then order="$base_peer $head_peer"
    else order="$head_peer $base_peer"; fi
    echo "repetition $rep of $reps: ${ref:+$ref }$order"
    # The harness prints a progress line per run, shown as it comes, and a table per invocation,
    # left in the log: the pooled figures come at the end.
    # shellcheck disable=SC2086 # $ref and $order are words without spaces
    { (cd "$work" && "$harness/run.sh" $ref $order -- --workloads W1,W2,W5,W6 --reps 1 \
          --results "$results" "$@") 2>&1; echo $? > "$work/out/rc"; } \
        | tee -a "$log" | grep --line-buffered '^\[' || true
    if [ "$(cat "$work/out/rc")" != 0 ]; then
        tail -n 20 "$log" >&2
        echo "compare.sh: the peer harness failed (log above)" >&2
        exit 1
    fi
    rep=$((rep + 1))
done

soak_args=""
if [ "$soak_minutes" != 0 ]; then
    if ! git -C "$here" diff --quiet "$base_sha" -- bench/soak.py bench/fidelity.py; then
        echo "compare: note: bench/soak.py differs between base and head; each tree runs its own" >&2
    fi
    for side in base head; do
        if [ $side = base ]; then dir=$base_dir; else dir=$here; fi
        echo "soak ($side, $soak_minutes min)"
        # A soak that finds a lost event exits 1; its figures are still wanted in the table.
        (cd "$dir" && .venv/bin/python -m bench.soak --minutes "$soak_minutes") \
            > "$work/soak-$side.txt" 2>&1 || true
        cat "$work/soak-$side.txt"
    done
    soak_args="--soak-base $work/soak-base.txt --soak-head $work/soak-head.txt"
fi

mkdir -p "$here/bench/results"
kept=$here/bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ)-$(git -C "$here" rev-parse --short "$base_sha")
cp "$results" "$kept.jsonl"
cp "$log" "$kept.log"
for side in base head; do
    [ ! -f "$work/soak-$side.txt" ] || cp "$work/soak-$side.txt" "$kept.soak-$side.txt"
done
echo
echo "## head / base (base $base_ref = $(git -C "$here" rev-parse --short "$base_sha"), head $head_desc)"
# shellcheck disable=SC2086 # soak_args holds paths without spaces (mktemp under /tmp)
"$here/.venv/bin/python" "$here/bench/ratios.py" ${frames:+--frames} "$results" $soak_args
echo
echo "kept: $kept.jsonl (every repetition), .log (the harness's output), .soak-*.txt"
