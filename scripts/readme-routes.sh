#!/usr/bin/env bash
# scripts/readme-routes.sh check|write: the README's endpoint table, between the markers
# <!-- routes:begin --> and <!-- routes:end -->, against consul.routes() (scripts/routes-table.lua).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
table=$(LUA_PATH="./lua/?.lua;;" LUA_CPATH="./build/5.4/?.so;;" lua5.4 scripts/routes-table.lua)
begin='<!-- routes:begin -->'
end='<!-- routes:end -->'
grep -qF "$begin" README.md && grep -qF "$end" README.md || { echo "README.md has no route table markers" >&2; exit 1; }
current=$(awk -v b="$begin" -v e="$end" '$0==e{p=0} p{print} $0==b{p=1}' README.md)
if [ "$mode" = write ]; then
  tmp=$(mktemp)
  awk -v b="$begin" -v e="$end" -v t="$table" '$0==b{print; print t; skip=1; next} $0==e{skip=0} !skip{print}' README.md >"$tmp"
  mv "$tmp" README.md
  echo "README.md: route table written ($(printf '%s\n' "$table" | tail -n +3 | wc -l) routes)"
elif [ "$current" != "$table" ]; then
  echo "README.md's route table differs from consul.routes(); run 'make readme'." >&2
  diff <(printf '%s\n' "$current") <(printf '%s\n' "$table") >&2 || true
  exit 1
else
  echo "README.md's route table matches consul.routes() ($(printf '%s\n' "$table" | tail -n +3 | wc -l) routes)"
fi
