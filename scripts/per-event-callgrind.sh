#!/usr/bin/env bash
# Instructions per event on the bridge's live path (crates/bridge/benches/per_event.rs), by
# callgrind: runs the harness with N and 2N frames, and the frame generation alone with N and 2N,
# and prints (I(2N) - I(N)) / N for each, and their difference (the bridge's own per event).
#
#   scripts/per-event-callgrind.sh [binary] [N] [harness options...]
#
# Without a binary it builds the bench (`cargo bench -p voxsig-bridge --bench per_event
# --no-run`) and uses it. Example: scripts/per-event-callgrind.sh "" 10000 --kind conversation
set -euo pipefail
bin="${1:-}"
n="${2:-10000}"
shift $(( $# > 2 ? 2 : $# ))
if [ -z "$bin" ]; then
  bin=$(cargo bench -p voxsig-bridge --bench per_event --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*per_event[^"]*"' | tail -1 | cut -d'"' -f4)
fi
out=$(mktemp -d)
count() { # events, extra args... -> instructions (Ir)
  local events="$1"; shift
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$events.$RANDOM" "$bin" --events "$events" "$@" \
    >/dev/null 2>"$out/log" || { cat "$out/log" >&2; exit 1; }
  grep -o 'Collected : [0-9]*' "$out/log" | grep -o '[0-9]*$'
}
a=$(count "$n" "$@"); b=$(count $((2 * n)) "$@")
ga=$(count "$n" --generate-only "$@"); gb=$(count $((2 * n)) --generate-only "$@")
awk -v a="$a" -v b="$b" -v ga="$ga" -v gb="$gb" -v n="$n" 'BEGIN {
  printf "total   I(N)=%d I(2N)=%d  per event %.0f\n", a, b, (b - a) / n;
  printf "frames  I(N)=%d I(2N)=%d  per event %.0f\n", ga, gb, (gb - ga) / n;
  printf "bridge per event: %.0f instructions\n", ((b - a) - (gb - ga)) / n }'
echo "callgrind files in $out"
