#!/usr/bin/env bash
# MESSAGE throughput through `sipvault serve` with archiving on.
#
#   bench/message-load.sh [MESSAGES] [RATE]      (defaults: 20000 msgs at 2000/s)
#
# SIPp (Debian sip-tester) registers bob, runs bob's UAS and sends MESSAGEs
# from alice through the server over UDP on loopback. Reports messages/s,
# the server's CPU time (from /proc) and how many IMs reached the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
RATE=${2:-2000}
TESTDATA=${TESTDATA:-../shared/testdata}
cargo build --release -q -p sipvault
BIN=$PWD/target/release/sipvault
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
DATA=$WORK/data
mkdir -p "$DATA"
printf '[sip]\ndomain = "sipp.test"\n' > "$DATA/sipvault.toml"
for u in alice bob; do $BIN user add $u --password secret --domain sipp.test --data "$DATA" >/dev/null; done

SIPVAULT_LOG=warn,sipvault=info $BIN serve --sip 127.0.0.1:0 --data "$DATA" 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 100); do grep -q sip_udp= "$WORK/serve.log" && break; sleep 0.1; done
ADDR=$(grep -o 'sip_udp=[^ ]*' "$WORK/serve.log" | head -1 | cut -d= -f2)
BOB=15090; ALICE=15091
SIPP_COMMON=(-nostdin -i 127.0.0.1 -timeout 300s -timeout_error)
sipp -sf "$PWD/tests/sipp/register-user.xml" "$ADDR" -p $BOB -m 1 -s bob -au bob -ap secret -auth_uri sipp.test "${SIPP_COMMON[@]}" >/dev/null
(cd "$TESTDATA/sipp/message" && sipp -sf uas.xml -p $BOB -m "$N" "${SIPP_COMMON[@]}" >/dev/null 2>&1) &
UAS=$!
sleep 0.5

cpu() { awk '{print $14 + $15}' /proc/$SERVER/stat; }
TCK=$(getconf CLK_TCK)
C0=$(cpu); T0=$(date +%s.%N)
(cd "$TESTDATA/sipp/message" && sipp -sf uac.xml "$ADDR" -p $ALICE -m "$N" -r "$RATE" -l 5000 "${SIPP_COMMON[@]}" \
  -trace_stat -stf "$WORK/uac.csv" >/dev/null 2>&1) || echo "warning: some MESSAGEs failed (see counts below)"
T1=$(date +%s.%N); C1=$(cpu)
wait $UAS || true
kill -TERM $SERVER; wait $SERVER || true
ELAPSED=$(echo "$T1 - $T0" | bc -l)
CPU=$(echo "($C1 - $C0) / $TCK" | bc -l)
ARCHIVED=$($BIN sql "SELECT count(*) AS n FROM im_messages WHERE delivery_status = 'delivered'" --format csv --data "$DATA" | tail -1)
SIPROWS=$($BIN sql "SELECT count(*) AS n FROM sip_messages" --format csv --data "$DATA" | tail -1)
OK=$(tail -1 "$WORK/uac.csv" | awk -F';' '{print $16}' 2>/dev/null || echo "?")
printf 'messages sent        %d (rate %d/s)\n' "$N" "$RATE"
printf 'successful (sipp)    %s\n' "$OK"
printf 'elapsed              %.2f s\n' "$ELAPSED"
printf 'throughput           %.0f MESSAGE/s\n' "$(echo "$N / $ELAPSED" | bc -l)"
printf 'server CPU           %.2f s (%.0f%% of one core)\n' "$CPU" "$(echo "100 * $CPU / $ELAPSED" | bc -l)"
printf 'archived IMs         %s\n' "$ARCHIVED"
printf 'archived SIP rows    %s\n' "$SIPROWS"
