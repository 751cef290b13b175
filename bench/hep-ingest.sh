#!/usr/bin/env bash
# HEP3 ingest end to end into the archive: a load generator sends HEP3
# packets (MESSAGE + 200 pairs) to `sipvault serve --hep`, then the server
# is stopped, which seals everything it received. Reports packets archived
# per second of wall time and per second of server CPU (= per core), drops,
# and the server's peak RSS.
#
#   bench/hep-ingest.sh tcp COUNT            one TCP connection, as fast as accepted
#   bench/hep-ingest.sh udp COUNT RATE       UDP at RATE packets/s
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-tcp}
N=${2:-400000}
RATE=${3:-50000}
cargo build --release -q -p sipvault
cargo build --release -q -p sipvault-collector --example hep_load
BIN=$PWD/target/release/sipvault
GEN=$PWD/target/release/examples/hep_load
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
SERVER=
DATA=$WORK/data
mkdir -p "$DATA"
# GNU time reports the server's total CPU (including the final seal) and peak RSS.
SIPVAULT_LOG=warn,sipvault=info /usr/bin/time -f '%U %S %M' -o "$WORK/time" \
  $BIN serve --sip 127.0.0.1:0 --hep 127.0.0.1:0 --data "$DATA" 2> "$WORK/serve.log" &
WRAPPER=$!
for _ in $(seq 50); do SERVER=$(pgrep -P $WRAPPER || true); [ -n "$SERVER" ] && break; sleep 0.1; done
for _ in $(seq 100); do grep -q hep_udp= "$WORK/serve.log" && break; sleep 0.1; done
HEP=$(grep -o 'hep_udp=[^ ]*' "$WORK/serve.log" | head -1 | cut -d= -f2)

cpu() { awk '{print $14 + $15}' /proc/$SERVER/stat; }
TCK=$(getconf CLK_TCK)
C0=$(cpu); T0=$(date +%s.%N)
$GEN "$MODE" "$HEP" "$N" "$RATE"
# The backlog is drained when the server (almost) stops using CPU: under
# 5 % of a core over 0.5 s; housekeeping ticks (call timeouts) stay below.
PREV=-1000
while :; do C=$(cpu); [ $((C - PREV)) -lt $((TCK / 40)) ] && break; PREV=$C; sleep 0.5; done
T1=$(echo "$(date +%s.%N) - 0.5" | bc -l); C1=$(cpu)
kill -TERM $SERVER; wait $WRAPPER || true
T2=$(date +%s.%N)
ELAPSED=$(echo "$T1 - $T0" | bc -l)
SEAL=$(echo "$T2 - $T1" | bc -l)
read -r USR SYS RSS < "$WORK/time"
CPU=$(echo "$USR + $SYS" | bc -l)
ARCHIVED=$($BIN sql "SELECT count(*) AS n FROM sip_messages" --format csv --data "$DATA" | tail -1)
IMS=$($BIN sql "SELECT count(*) AS n FROM im_messages" --format csv --data "$DATA" | tail -1)
printf 'mode                 %s\n' "$MODE"
printf 'packets sent         %d\n' "$N"
printf 'archived SIP rows    %s (dropped %d)\n' "$ARCHIVED" "$((N - ARCHIVED))"
printf 'archived IMs         %s\n' "$IMS"
printf 'elapsed              %.2f s (until the server was idle), then %.2f s to seal\n' "$ELAPSED" "$SEAL"
printf 'throughput           %.0f packets/s archived (wall)\n' "$(echo "$ARCHIVED / $ELAPSED" | bc -l)"
printf 'server CPU (total)    %.2f s = %.0f packets per CPU-second (per core)\n' "$CPU" "$(echo "$ARCHIVED / $CPU" | bc -l)"
printf 'peak RSS             %d MiB\n' "$((RSS / 1024))"
