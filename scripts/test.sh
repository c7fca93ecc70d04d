#!/bin/sh
# The test command: sets up the machine (scripts/setup.sh), checks formatting,
# lint and types, runs every test under tests/, and ends with one summary line
# "tests: N passed, N failed".
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
deno task check
log=$(mktemp)
status=0
NO_COLOR=1 deno test -A tests/ "$@" 2>&1 | tee "$log" || status=$?
# deno prints "ok | 12 passed | 0 failed (1s)" (with "| N ignored" when some are skipped)
summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -n 1)
rm -f "$log"
passed=$(echo "$summary" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
failed=$(echo "$summary" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
ignored=$(echo "$summary" | sed -n 's/.* \([0-9]*\) ignored.*/\1/p')
line="tests: ${passed:-0} passed, ${failed:-0} failed"
[ -n "$ignored" ] && line="$line, $ignored skipped"
echo "$line"
exit $status
