#!/usr/bin/env bash
# Chat-room fan-out through `sipvault serve` with archiving on.
#
#   bench/room-fanout.sh [MEMBERS] [POSTS] [POSTERS] [MODE]
#   (defaults: 100 members, 2000 posts, 10 posters, subscribe)
#
# Adds MEMBERS users and one room holding them all, starts the release
# server (room rate limit lifted), and runs the `room_load` example:
# every member registers over UDP and, in MODE `subscribe`, subscribes to
# the room (`Event: chat-room`); POSTERS of them post POSTS messages in
# all, each waiting for its post's 200, and every member counts the posts
# it receives (NOTIFY `<post>` elements, or MESSAGE copies in MODE
# `message`). Reports posts/s, deliveries/s, the server's CPU seconds and,
# after a clean stop, what reached the archive: IM rows answered 200 (posts,
# and in MODE `message` the copies) and NOTIFY rows. Builds into
# $CARGO_TARGET_DIR (default ./target).
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${1:-100}
POSTS=${2:-2000}
POSTERS=${3:-10}
MODE=${4:-subscribe}
DOMAIN=fanout.test
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p sipvault
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p sipvault-server --example room_load
BIN=$TARGET/release/sipvault
LOAD=$TARGET/release/examples/room_load
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
DATA=$WORK/data
mkdir -p "$DATA"
printf '[sip]\ndomain = "%s"\n[rooms]\nposts_per_second_per_member = 1000000\nburst_per_member = 1000000\n' "$DOMAIN" > "$DATA/sipvault.toml"
$BIN room create budget --topic "fan-out bench" --domain $DOMAIN --data "$DATA" > /dev/null 2>&1 || true
for i in $(seq 0 $((MEMBERS - 1))); do
  u=$(printf 'm%03d' "$i")
  $BIN user add "$u" --password pw --domain $DOMAIN --data "$DATA" > /dev/null
  $BIN room add-member budget "$u" --data "$DATA" > /dev/null
done

SIPVAULT_LOG=warn,sipvault=info $BIN serve --sip 127.0.0.1:0 --tls off --data "$DATA" 2> "$WORK/serve.log" &
SERVER=$!
for _ in $(seq 100); do grep -q sip_udp= "$WORK/serve.log" && break; sleep 0.1; done
ADDR=$(grep -o 'sip_udp=[^ ]*' "$WORK/serve.log" | head -1 | cut -d= -f2)
cpu() { awk '{print $14 + $15}' /proc/$SERVER/stat; }
TCK=$(getconf CLK_TCK)
C0=$(cpu)
$LOAD "$ADDR" $DOMAIN budget "$MEMBERS" "$POSTS" "$POSTERS" "$MODE"
C1=$(cpu)
kill -TERM $SERVER; wait $SERVER || true
ROWS=$($BIN sql "SELECT count(*) AS n FROM im_messages WHERE status = 200" --format csv --data "$DATA" | tail -1)
NOTIFIES=$($BIN sql "SELECT count(*) AS n FROM sip_messages WHERE method = 'NOTIFY'" --format csv --data "$DATA" | tail -1)
echo "server CPU        $(echo "($C1 - $C0) / $TCK" | bc -l | xargs printf '%.2f') s"
echo "IM rows archived  $ROWS (posts + copies answered 200)"
echo "NOTIFY rows       $NOTIFIES (sent and retransmitted)"
echo "load average      $(cut -d' ' -f1-3 /proc/loadavg)"
