#!/usr/bin/env bash
# Line coverage of src/ from the unit tests and the end-to-end tests together (the end-to-end
# tests start their own local control plane, as in scripts/test.sh).
#
# Prints the figure per module of src/ and in total; src/devcluster/ (the local control plane
# and node simulator, test infrastructure rather than product) is reported on its own line and
# left out of the total. Writes target/coverage/lcov.info, target/coverage/tarpaulin-report.html
# and target/coverage/files.txt (per file, most uncovered lines first).
#
# Uses cargo-tarpaulin with its LLVM engine (rustc's -Cinstrument-coverage; tarpaulin reads the
# profiles itself, so no llvm-tools component is needed) and installs it on first use. See
# docs/coverage.md. Takes a full instrumented build plus the whole test suite: run it with
# `nice` on a shared machine.
#
# Environment:
#   COVERAGE_MIN           exit non-zero when the total is below this percentage (default 85)
#   COVERAGE_TARGET_DIR    build directory (default ${CARGO_TARGET_DIR:-target}/coverage-build)
#   TEST_THREADS           test threads (default 4, as scripts/test.sh)
#   Arguments after `--` go to the test binaries, e.g. `scripts/coverage.sh -- session::`.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly TARPAULIN_VERSION=0.37.5
readonly REPORT_DIR=target/coverage
min=${COVERAGE_MIN:-85}
build_dir=${COVERAGE_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/coverage-build}

scripts/build-deps.sh
scripts/control-plane-binaries.sh >/dev/null

if ! cargo tarpaulin --version 2>/dev/null | grep -qw "$TARPAULIN_VERSION"; then
  echo "== installing cargo-tarpaulin $TARPAULIN_VERSION" >&2
  cargo install cargo-tarpaulin --version "$TARPAULIN_VERSION" --locked
fi

test_args=()
if [ "${1:-}" = "--" ]; then
  shift
  test_args=("$@")
fi

mkdir -p "$REPORT_DIR"
echo "== cargo tarpaulin (instrumented build into $build_dir, then unit and end-to-end tests)" >&2
status=0
# -Cdebuginfo is lowered from tarpaulin's 2: the LLVM engine maps counters through the
# coverage sections, not DWARF, and full debug info of every dependency costs minutes of linking.
# The target dir is passed as a flag: tarpaulin's own RUSTFLAGS must not share a build
# directory with ordinary builds, or each would rebuild everything after the other.
env -u CARGO_TARGET_DIR cargo tarpaulin \
  --engine llvm \
  --skip-clean \
  --target-dir "$build_dir" \
  --rustflags=-Cdebuginfo=line-tables-only \
  --tests \
  --no-fail-fast \
  --timeout 3600 \
  --out Lcov --out Html \
  --output-dir "$REPORT_DIR" \
  -- --test-threads="${TEST_THREADS:-4}" "${test_args[@]}" || status=$?

if [ "$status" -ne 0 ]; then
  echo "coverage: tests failed; tarpaulin leaves out the coverage of a test binary that fails," >&2
  echo "coverage: so the figures below undercount (rerun, or skip a flaky test after --)" >&2
fi
[ -s "$REPORT_DIR/lcov.info" ] || { echo "coverage: no $REPORT_DIR/lcov.info written" >&2; exit 1; }

# Per file and per module figures from the lcov data: a line counts once, covered when any
# test hit it.
awk -v root="$PWD/" -v min="$min" -v files="$REPORT_DIR/files.txt" '
  /^SF:/ { file = substr($0, 4); sub("^" root, "", file); next }
  /^DA:/ {
    if (file !~ /^src\//) next
    split(substr($0, 4), f, ","); key = file SUBSEP f[1]
    if (!(key in seen)) { seen[key] = 0; lines[file]++ }
    if (f[2] > 0 && !seen[key]) { seen[key] = 1; hit[file]++ }
  }
  END {
    for (file in lines) {
      rest = substr(file, 5); n = index(rest, "/")
      module = n ? substr(rest, 1, n - 1) : rest; sub(/\.rs$/, "", module)
      mlines[module] += lines[file]; mhit[module] += hit[file]
      printf "%6d %6d %6.1f%%  %s\n", lines[file] - hit[file], lines[file], 100 * hit[file] / lines[file], file | "sort -rn > " files
    }
    printf "%-14s %7s %7s %7s\n", "module", "lines", "covered", "percent"
    for (m in mlines) {
      if (m == "devcluster") continue
      total += mlines[m]; covered += mhit[m]
      printf "%-14s %7d %7d %6.1f%%\n", m, mlines[m], mhit[m], 100 * mhit[m] / mlines[m] | "sort"
    }
    close("sort")
    printf "%-14s %7d %7d %6.1f%%\n", "TOTAL", total, covered, 100 * covered / total
    if ("devcluster" in mlines)
      printf "%-14s %7d %7d %6.1f%%  (test infrastructure, not in the total)\n", "devcluster", mlines["devcluster"], mhit["devcluster"], 100 * mhit["devcluster"] / mlines["devcluster"]
    pct = 100 * covered / total
    if (pct < min) { printf "coverage: total %.1f%% is below %s%%\n", pct, min > "/dev/stderr"; exit 2 }
  }' "$REPORT_DIR/lcov.info" || status=$?

echo "reports: $REPORT_DIR/lcov.info $REPORT_DIR/tarpaulin-report.html $REPORT_DIR/files.txt" >&2
exit "$status"
