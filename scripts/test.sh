#!/bin/sh
# The test command: sets up the machine (scripts/setup.sh), checks formatting,
# lint, types and layering (`deno task check`), then runs every test under
# tests/ (scripts/run_tests.sh), ending with "tests: N passed, N failed".
# Exits non-zero if any step or any test fails.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
deno task check
exec sh scripts/run_tests.sh "$@"
