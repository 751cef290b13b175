#!/usr/bin/env bash
# `sipvault report cdr` and `sipvault report call-summary` against the
# equivalent DuckDB queries on the same Parquet files, in the same run.
#
#   bench/report-vs-duckdb.sh [N_CALLS] [N_IMS]     (defaults: 1000000 calls, 100000 IMs)
#
# The archive is the deterministic report fixture (query/src/fixture.rs,
# written by the release `gen_fixture` example) with N_CALLS calls over 7
# days. Each query runs 3 times and the best wall time is kept:
#   cdr           `sipvault report cdr --format csv > /dev/null` against
#                 DuckDB `COPY (same columns, same order) TO '/dev/null' (FORMAT CSV)`;
#   call-summary  `sipvault report call-summary --format csv` (per day) against
#                 the same aggregation in DuckDB (with the report's rounding).
# sipvault times are whole processes (start-up, catalog, planning, output);
# DuckDB times are in one Python process, from opening a fresh in-memory
# connection to the last row, so its interpreter start-up is not counted.
# Both outputs are checked to agree (row counts; call-summary values).
# ratio = sipvault time / DuckDB time (below 1.0: sipvault is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${1:-1000000}
IMS=${2:-100000}
cargo build --release -q -p sipvault
# With -p sipvault, the example shares the binary's dependency features, so
# the dependencies are compiled once for both.
cargo build --release -q -p sipvault -p sipvault-query --example gen_fixture
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$TARGET/release/sipvault
GEN=$TARGET/release/examples/gen_fixture
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data

$GEN "$DATA" --calls "$CALLS" --ims "$IMS"
PARQUET_MB=$(du -sm "$DATA/archive/calls" | cut -f1)

now() { date +%s.%N; }
# best_of CMD...: best wall time of 3 runs, in seconds.
best_of() {
  local best=
  for _ in 1 2 3; do
    local t0 t1 t
    t0=$(now); "$@"; t1=$(now)
    t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
export SIPVAULT_LOG=warn
cdr() { $BIN report cdr --format csv --data "$DATA" > /dev/null; }
summary() { $BIN report call-summary --format csv --data "$DATA" > /dev/null; }
OURS_CDR=$(best_of cdr)
OURS_SUMMARY=$(best_of summary)
OURS_CDR_ROWS=$(($($BIN report cdr --format csv --data "$DATA" | wc -l) - 1))
$BIN report call-summary --format csv --data "$DATA" > "$WORK/summary-ours.csv"

# The DuckDB side: the report SQL (query/reports/cdr.sql, call_summary.sql)
# as the cross-check test (query/tests/reports.rs) writes it for DuckDB.
python3 - "$DATA/archive" "$WORK/summary-ours.csv" > "$WORK/duckdb.out" <<'EOF'
import csv, sys, time
import duckdb
archive, ours_csv = sys.argv[1], sys.argv[2]
CDR = """COPY (SELECT time AS start, call_id, caller, callee, disposition, final_code,
                      reason, ended_by, setup_ms, duration_ms, answer_time, end_time
               FROM calls ORDER BY time, call_id) TO '/dev/null' (FORMAT CSV, HEADER)"""
SUMMARY = """SELECT CAST(date AS VARCHAR) AS day, count(*) AS calls,
               count(*) FILTER (WHERE disposition = 'answered') AS answered,
               round(100.0 * count(*) FILTER (WHERE disposition = 'answered') / count(*), 2) AS asr_percent,
               round(avg(setup_ms), 1) AS avg_setup_ms,
               round(avg(duration_ms) FILTER (WHERE disposition = 'answered') / 1000.0, 1) AS avg_duration_s
             FROM calls GROUP BY 1 ORDER BY 1"""
def connect():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW calls AS SELECT * FROM read_parquet('{archive}/calls/**/*.parquet', hive_partitioning = true)")
    return con
def best(sql):
    times, result = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        con = connect()
        result = con.execute(sql).fetchall()
        times.append(time.perf_counter() - t0)
        con.close()
    return min(times), result
cdr_t, cdr_rows = best(CDR)
summary_t, summary_rows = best(SUMMARY)
# COPY returns the number of rows written.
print(cdr_t, summary_t, cdr_rows[0][0])
with open(ours_csv) as f:
    ours = [r for r in csv.DictReader(f)]
assert len(ours) == len(summary_rows), (len(ours), len(summary_rows))
for o, d in zip(ours, summary_rows):
    theirs = dict(zip(["day", "calls", "answered", "asr_percent", "avg_setup_ms", "avg_duration_s"], d))
    for k, v in theirs.items():
        same = str(v) == o[k] if k == "day" else abs(float(v) - float(o[k])) < 1e-9
        assert same, f"call-summary differs: {k} {o[k]} vs DuckDB {v}"
print(len(ours))
EOF
read -r DUCK_CDR DUCK_SUMMARY DUCK_CDR_ROWS < <(head -1 "$WORK/duckdb.out")
SUMMARY_ROWS=$(sed -n 2p "$WORK/duckdb.out")
[ "$OURS_CDR_ROWS" = "$DUCK_CDR_ROWS" ] || { echo "cdr rows differ: $OURS_CDR_ROWS vs DuckDB $DUCK_CDR_ROWS" >&2; exit 1; }

printf 'archive              %d calls (%d MB of calls Parquet), %d IMs\n' "$CALLS" "$PARQUET_MB" "$IMS"
printf 'report               sipvault   DuckDB   ratio (sipvault / DuckDB)\n'
printf 'cdr (%d rows)    %7.2f s %7.2f s   %.2fx\n' "$OURS_CDR_ROWS" "$OURS_CDR" "$DUCK_CDR" "$(echo "$OURS_CDR / $DUCK_CDR" | bc -l)"
printf 'call-summary (%d rows) %7.2f s %7.2f s   %.2fx\n' "$SUMMARY_ROWS" "$OURS_SUMMARY" "$DUCK_SUMMARY" "$(echo "$OURS_SUMMARY / $DUCK_SUMMARY" | bc -l)"
