#!/usr/bin/env bash
# Sums busted's closing lines ("N successes / N failures / N errors / N pending : T seconds")
# over the result files given and prints the one line CI reads: "N passed, N failed[, N skipped]".
#   scripts/summary.sh --line FILE   prints FILE's closing line only (empty when it has none)
set -u

# busted's closing line of a results file, colours stripped
busted_line() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' | tail -n 1
}
if [ "${1:-}" = --line ]; then
  busted_line "$2"
  exit 0
fi

pass=0 fail=0 skip=0 seen=0
for f in "$@"; do
  [ -f "$f" ] || { echo "summary: no results in $f (the run did not finish)" >&2; fail=$((fail + 1)); continue; }
  line=$(busted_line "$f")
  if [ -z "$line" ]; then
    echo "summary: no busted summary in $f (the run crashed?)" >&2
    fail=$((fail + 1)); continue
  fi
  seen=$((seen + 1))
  read -r s _ _ fl _ _ e _ _ p _ <<<"$line"
  pass=$((pass + s)); fail=$((fail + fl + e)); skip=$((skip + p))
done
if [ "$skip" -gt 0 ]; then
  echo "$pass passed, $fail failed, $skip skipped"
else
  echo "$pass passed, $fail failed"
fi
