#!/usr/bin/env bash
# The WAL against TiKV's raft-engine, in one sitting on one disk (docs/wal.md,
# "raft-engine in the same run"): wal-stress and raft-engine-stress run the
# same closed loop, alternated, and the ratios are printed per round.
#
#   bench/scripts/wal-vs-raft-engine.sh [ROUNDS] [WRITERS...]
#
# Defaults: 3 rounds of 1, 16 and 64 writers; 1000 groups, 1 KiB entries,
# 5-second runs, no compaction (override with RAFT_GROUPS, ENTRY_SIZE, DURATION,
# KEEP_ENTRIES). Logs are written under DIR (default: a fresh directory in
# /tmp; put it on the disk you want to measure). The first run builds
# raft-engine-stress, fetching raft-engine 0.4 from crates.io.
set -euo pipefail

rounds=${1:-3}
shift || true
writers=("$@")
[ ${#writers[@]} -gt 0 ] || writers=(1 16 64)
groups=${RAFT_GROUPS:-1000}
entry=${ENTRY_SIZE:-1024}
duration=${DURATION:-5}
keep=${KEEP_ENTRIES:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${DIR:-$(mktemp -d /tmp/wal-vs-raft-engine.XXXXXX)}
mkdir -p "$work"

cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tessera-wal --bin wal-stress
cargo build --release --quiet --manifest-path "$root/bench/raft-engine-stress/Cargo.toml"
ours="$root/target/release/wal-stress"
theirs="$root/bench/raft-engine-stress/target/release/raft-engine-stress"

common=(--groups "$groups" --entry-size "$entry" --duration "$duration" --keep-entries "$keep" --json)
echo "groups $groups, entries of $entry B, $duration s per run, keep $keep entries (0: never compact)"
printf '%-8s %-6s %14s %9s %9s %14s %9s %9s %7s\n' writers round \
    "raft-engine/s" "p99 us" "p99.9 us" "wal-stress/s" "p99 us" "p99.9 us" ratio
for w in "${writers[@]}"; do
    for r in $(seq 1 "$rounds"); do
        rm -rf "$work/re" "$work/ws"
        re=$("$theirs" "${common[@]}" --writers "$w" --dir "$work/re" | tail -1)
        ws=$("$ours" "${common[@]}" --writers "$w" --dir "$work/ws" | tail -1)
        rm -rf "$work/ws"
        python3 - "$w" "$r" "$re" "$ws" <<'PY'
import json, sys
w, r, re_, ws = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(f"{w:<8} {r:<6} {re_['entries_per_sec']:14.0f} {re_['p99_us']:9} {re_['p999_us']:9} "
      f"{ws['entries_per_sec']:14.0f} {ws['p99_us']:9} {ws['p999_us']:9} "
      f"{ws['entries_per_sec'] / re_['entries_per_sec']:6.2f}x")
PY
    done
done
[ -n "${DIR:-}" ] || rm -rf "$work"
