#!/bin/sh
# Runs `deno test` on the given paths (default: tests/) and ends with one
# summary line "tests: N passed, N failed[, N skipped]". Exits non-zero when
# deno test does, when any test failed, or when no summary could be read
# (deno crashed, or nothing ran): a run is green only when all of that says so.
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- tests/
log=$(mktemp)
code_file=$(mktemp)
trap 'rm -f "$log" "$code_file"' EXIT
# POSIX sh has no pipefail: the pipeline's status is tee's, so deno's own
# exit code travels through a file.
{
  set +e
  NO_COLOR=1 deno test -A "$@" 2>&1
  echo $? >"$code_file"
} | tee "$log"
code=$(cat "$code_file")
# deno prints "ok | 12 passed | 0 failed (1s)" or "FAILED | 11 passed | 1 failed (1s)",
# with "| N ignored" when some are skipped.
summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -n 1 || true)
if [ -z "$summary" ]; then
  echo "tests: no summary from deno test (exit $code)" >&2
  exit 1
fi
passed=$(echo "$summary" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
failed=$(echo "$summary" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
ignored=$(echo "$summary" | sed -n 's/.* \([0-9]*\) ignored.*/\1/p')
line="tests: ${passed:-0} passed, ${failed:-0} failed"
[ -n "$ignored" ] && line="$line, $ignored skipped"
echo "$line"
if [ "$code" -ne 0 ] || [ "${failed:-0}" -ne 0 ] || [ "${passed:-0}" -eq 0 ]; then
  exit 1
fi
