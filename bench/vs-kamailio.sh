#!/usr/bin/env bash
# SIP server throughput: `sipvault serve` (archiving on) against Kamailio,
# the same SIPp scenarios, alternating in the same run (issue 4).
#
#   bench/vs-kamailio.sh [SECONDS] [RATE...]       (defaults: 10 s at 2000/s)
#
# For every scenario (REGISTER, MESSAGE, call), every RATE and every round,
# a fresh `sipvault serve` (release build, default config plus `domain`,
# new data directory) and a fresh Kamailio 5.6 (bench/kamailio-proxy.cfg:
# in-memory registrar, digest auth against a static list, record-routing
# stateful proxy, no siptrace) each get the same SIPp scenario at RATE per
# second for SECONDS seconds over UDP on loopback, one after the other
# (the order flips every round). Reported per run: scenarios completed per
# second, failures, the server's CPU seconds from /proc/<pid>/stat (all of
# Kamailio's processes) from the start of the load until the server is idle
# again, completions per CPU-second, SIPp's own CPU, the load average and,
# for sipvault, what reached the archive after a clean stop.
#
#   register  tests/sipp/register-user.xml as alice: REGISTER, 401 with a
#             digest challenge, REGISTER with credentials, 200
#   message   testdata sipp/message uac.xml -> uas.xml as bob (registered
#             first): MESSAGE relayed to bob's contact, 200 back
#   call      testdata sipp/call-basic uac.xml -> tests/sipp/call-uas-record-route.xml
#             as bob: INVITE/100/180/200 (SDP)/ACK/BYE/200, ACK and BYE
#             loose-routed through the proxy. The scenarios pause 0.7 s per
#             call (UAC 0.5 s before BYE, UAS 0.2 s before 200), which is
#             taken off the elapsed time for calls/s.
#
# Environment: SCENARIOS="register message call", ROUNDS=1,
# REGISTER_RATES / MESSAGE_RATES / CALL_RATES="R1 R2..." (instead of RATE...),
# KAMAILIO_CHILDREN=2 (UDP worker processes), NO_BUILD=1 (skip cargo build),
# SIPVAULT_BIN (default target/release/sipvault), TESTDATA,
# TARGETS="sipvault kamailio" (to run one side only), PERF=DIR (perf record
# -g of `sipvault serve` during each of its loads), KEEP=DIR (copy the
# per-run logs and SIPp stats there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-10}
shift || true
RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(2000)
SCENARIOS=${SCENARIOS:-register message call}
ROUNDS=${ROUNDS:-1}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
TESTDATA=$(cd "${TESTDATA:-../shared/testdata}" && pwd)
BIN=${SIPVAULT_BIN:-$ROOT/target/release/sipvault}
KAMAILIO=${KAMAILIO:-kamailio}
TCK=$(getconf CLK_TCK)

command -v sipp >/dev/null || { echo "sipp is not installed (Debian sip-tester)" >&2; exit 2; }
command -v "$KAMAILIO" >/dev/null || { echo "kamailio is not installed (Debian kamailio)" >&2; exit 2; }
if [ -z "${NO_BUILD:-}" ] && [ -z "${SIPVAULT_BIN:-}" ]; then
  cargo build --release -q -p sipvault
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU ticks (user + system) of the given pids, summed.
ticks() {
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}

# Waits until the given pids use less than ~5 % of a core over 0.5 s (at
# most 15 s), so that work queued by the load (archiving, timers) is counted.
wait_idle() {
  local a b i
  a=$(ticks "$@")
  for i in $(seq 30); do
    sleep 0.5
    b=$(ticks "$@")
    [ $((b - a)) -le $((TCK / 40 + 1)) ] && break
    a=$b
  done
}

SIPP_COMMON=(-nostdin -i 127.0.0.1 -timeout_error)

# Starts the target; sets ADDR, SPID (server pid), CPIDS (pids to account).
start_sipvault() {
  local dir=$1 u
  mkdir -p "$dir/data"
  printf '[sip]\ndomain = "sipp.test"\n' > "$dir/data/sipvault.toml"
  for u in alice bob; do
    "$BIN" user add $u --password secret --domain sipp.test --data "$dir/data" >/dev/null
  done
  "$BIN" serve --sip 127.0.0.1:0 --data "$dir/data" 2> "$dir/server.log" &
  SPID=$!
  PIDS+=("$SPID")
  for _ in $(seq 200); do grep -q sip_udp= "$dir/server.log" && break; sleep 0.1; done
  ADDR=$(grep -o 'sip_udp=[^ ]*' "$dir/server.log" | head -1 | cut -d= -f2)
  [ -n "$ADDR" ] || { echo "serve did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
  CPIDS=("$SPID")
}

start_kamailio() {
  local dir=$1 port i
  port=$(free_port)
  sed -e "s/LISTEN_PORT/$port/g" -e "s/CHILDREN/$KAMAILIO_CHILDREN/" \
    "$ROOT/bench/kamailio-proxy.cfg" > "$dir/kamailio.cfg"
  "$KAMAILIO" -f "$dir/kamailio.cfg" -DD -E -Y "$dir" -m 1024 -M 16 > "$dir/server.log" 2>&1 &
  SPID=$!
  PIDS+=("$SPID")
  ADDR=127.0.0.1:$port
  # Ready when all worker processes are forked: main + udp children + timer,
  # slow timer, ctl... (at least children + 3).
  for i in $(seq 200); do
    [ "$(pgrep -c -P "$SPID" || true)" -ge $((KAMAILIO_CHILDREN + 3)) ] && break
    kill -0 "$SPID" 2>/dev/null || { echo "kamailio did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  sleep 0.5
  mapfile -t CPIDS < <(echo "$SPID"; pgrep -P "$SPID")
}

stop_server() {
  kill -TERM "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
}

# Column of the last line of a SIPp -trace_stat file, by header name.
stat_col() {
  awk -F';' -v name="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i }
    END { print (c ? $c : "?") }' "$1"
}

# sipp wrapped in GNU time for its CPU (user + system seconds into $1).
timed_sipp() {
  local out=$1
  shift
  /usr/bin/time -f '%U %S' -o "$out" sipp "$@"
}
sipp_cpu() { awk 'END { if (NF >= 2) printf "%.2f", $1 + $2; else print "?" }' "$1" 2>/dev/null || echo "?"; }

RESULTS=$WORK/results.tsv
: > "$RESULTS"

# run TARGET SCENARIO RATE ROUND
run() {
  local target=$1 scen=$2 rate=$3 round=$4
  local dir=$WORK/$scen-$rate-$round-$target
  mkdir -p "$dir"
  local n=$((rate * SECS))
  local alice bob pause=0 uas_pid="" archived="-"
  alice=$(free_port)
  bob=$(free_port)
  if [ "$target" = sipvault ]; then start_sipvault "$dir"; else start_kamailio "$dir"; fi
  local to=$((SECS * 3 + 30))
  case $scen in
    message|call)
      sipp -sf "$ROOT/tests/sipp/register-user.xml" "$ADDR" -p "$bob" -m 1 -s bob -au bob -ap secret \
        -auth_uri sipp.test -timeout 10s "${SIPP_COMMON[@]}" > "$dir/register-bob.out" 2>&1 \
        || { echo "registering bob at $target failed" >&2; cat "$dir/server.log" >&2; exit 1; }
      ;;
  esac
  case $scen in
    message)
      (cd "$TESTDATA/sipp/message" && exec /usr/bin/time -f '%U %S' -o "$dir/uas.time" \
        sipp -sf uas.xml -p "$bob" -m "$n" -timeout "$((to + 10))s" "${SIPP_COMMON[@]}" \
        > "$dir/uas.out" 2>&1) &
      uas_pid=$!
      ;;
    call)
      (exec /usr/bin/time -f '%U %S' -o "$dir/uas.time" \
        sipp -sf "$ROOT/tests/sipp/call-uas-record-route.xml" -p "$bob" -mp "$(free_port)" -m "$n" \
        -timeout "$((to + 10))s" "${SIPP_COMMON[@]}" > "$dir/uas.out" 2>&1) &
      uas_pid=$!
      pause=0.7
      ;;
  esac
  [ -n "$uas_pid" ] && PIDS+=("$uas_pid") && sleep 0.5

  local perf_pid=""
  if [ -n "${PERF:-}" ] && [ "$target" = sipvault ]; then
    mkdir -p "$PERF"
    perf record -g -F 499 -p "$SPID" -o "$PERF/perf-$scen-$rate-$round-$target.data" > "$dir/perf.out" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    sleep 0.5
  fi
  local c0 t0 t1 c1
  c0=$(ticks "${CPIDS[@]}")
  t0=$(date +%s.%N)
  case $scen in
    register)
      timed_sipp "$dir/uac.time" -sf "$ROOT/tests/sipp/register-user.xml" "$ADDR" -p "$alice" \
        -s alice -au alice -ap secret -auth_uri sipp.test \
        -m "$n" -r "$rate" -l $((rate * 2 + 100)) -timeout "${to}s" "${SIPP_COMMON[@]}" \
        -trace_stat -stf "$dir/uac.csv" > "$dir/uac.out" 2>&1 || true
      ;;
    message)
      (cd "$TESTDATA/sipp/message" && exec /usr/bin/time -f '%U %S' -o "$dir/uac.time" \
        sipp -sf uac.xml "$ADDR" -p "$alice" \
        -m "$n" -r "$rate" -l $((rate * 2 + 100)) -timeout "${to}s" "${SIPP_COMMON[@]}" \
        -trace_stat -stf "$dir/uac.csv" > "$dir/uac.out" 2>&1) || true
      ;;
    call)
      (cd "$TESTDATA/sipp/call-basic" && exec /usr/bin/time -f '%U %S' -o "$dir/uac.time" \
        sipp -sf uac.xml "$ADDR" -p "$alice" -mp "$(free_port)" \
        -m "$n" -r "$rate" -l $((rate * 3 + 100)) -timeout "${to}s" "${SIPP_COMMON[@]}" \
        -trace_stat -stf "$dir/uac.csv" > "$dir/uac.out" 2>&1) || true
      ;;
  esac
  t1=$(date +%s.%N)
  wait_idle "${CPIDS[@]}"
  c1=$(ticks "${CPIDS[@]}")
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ -n "$uas_pid" ]; then
    for _ in $(seq 40); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$uas_pid" 2>/dev/null || true
    wait "$uas_pid" 2>/dev/null || true
  fi
  stop_server
  if [ "$target" = sipvault ]; then
    local q
    case $scen in
      register) q="SELECT count(*) AS n FROM sip_messages WHERE cseq_method = 'REGISTER' AND status = 200 AND direction = 'out'" ;;
      message) q="SELECT count(*) AS n FROM im_messages WHERE delivery_status = 'delivered'" ;;
      call) q="SELECT count(*) AS n FROM calls WHERE disposition = 'answered'" ;;
    esac
    archived=$("$BIN" sql "$q" --format csv --data "$dir/data" 2>"$dir/sql.err" | tail -1) || archived="?"
  fi
  local ok failed
  ok=$(stat_col "$dir/uac.csv" 'SuccessfulCall(C)' 2>/dev/null || echo 0)
  failed=$(stat_col "$dir/uac.csv" 'FailedCall(C)' 2>/dev/null || echo "?")
  [[ $ok =~ ^[0-9]+$ ]] || ok=0
  local elapsed cpu per_s per_cpu sippcpu
  elapsed=$(echo "$t1 - $t0 - $pause" | bc -l)
  cpu=$(echo "($c1 - $c0) / $TCK" | bc -l)
  per_s=$(echo "$ok / $elapsed" | bc -l)
  per_cpu=$(if [ "$(echo "$cpu > 0" | bc)" = 1 ]; then echo "$ok / $cpu" | bc -l; else echo 0; fi)
  sippcpu=$(sipp_cpu "$dir/uac.time")
  [ -n "$uas_pid" ] && sippcpu="$sippcpu+$(sipp_cpu "$dir/uas.time")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.2f\t%.0f\t%s\t%s\t%s\n' \
    "$scen" "$rate" "$round" "$target" "$n" "$ok" "$failed" "$per_s" "$cpu" "$per_cpu" \
    "$sippcpu" "$load" "$archived" | tee -a "$RESULTS" >&2
}

echo "start: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(uptime)" >&2
echo "sipvault: $BIN; $("$KAMAILIO" -v | head -1); $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*')" >&2
echo "$(nproc) cores; each run ${SECS} s; rates ${RATES[*]}; Kamailio children=$KAMAILIO_CHILDREN" >&2
printf 'scenario\trate\tround\ttarget\tsent\tok\tfailed\tper_s\tcpu_s\tper_cpu_s\tsipp_cpu\tload1\tarchived\n' >&2
for scen in $SCENARIOS; do
  var=${scen^^}_RATES
  # shellcheck disable=SC2206
  if [ -n "${!var:-}" ]; then rates=(${!var}); else rates=("${RATES[@]}"); fi
  for rate in "${rates[@]}"; do
    for round in $(seq "$ROUNDS"); do
      if [ $((round % 2)) = 1 ]; then order="sipvault kamailio"; else order="kamailio sipvault"; fi
      [ -n "${TARGETS:-}" ] && order=$TARGETS
      for target in $order; do run "$target" "$scen" "$rate" "$round"; done
    done
  done
done
echo "end: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(uptime)" >&2

# Markdown: one line per scenario, rate and round, the two targets side by side.
echo
echo "| scenario | offered/s | round | sipvault ok/failed | sipvault /s | Kamailio ok/failed | Kamailio /s | ratio /s | sipvault CPU s (per CPU-s) | Kamailio CPU s (per CPU-s) | ratio per CPU-s | sipp CPU s sv / k | archived by sipvault |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '
  { key = $1 "\t" $2 "\t" $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
    row[key, $4] = $0 }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]
      split(row[k, "sipvault"], s, "\t"); split(row[k, "kamailio"], m, "\t")
      r = (m[8] > 0) ? sprintf("%.2f", s[8] / m[8]) : "-"
      rc = (m[10] > 0) ? sprintf("%.2f", s[10] / m[10]) : "-"
      printf "| %s | %s | %s | %s/%s | %s | %s/%s | %s | %s× | %s (%s) | %s (%s) | %s× | %s / %s | %s |\n",
        s[1], s[2], s[3], s[6], s[7], s[8], m[6], m[7], m[8], r, s[9], s[10], m[9], m[10], rc, s[11], m[11], s[13]
    }
  }' "$RESULTS"
