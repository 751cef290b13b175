#!/usr/bin/env bash
# `sipvault import pcap` throughput against `tshark -r FILE -Y sip` on the
# same file in the same run.
#
#   bench/import-pcap.sh [COPIES] [mix|sip]     (defaults: 40 mix)
#
# The workload is built with mergecap -a (concatenation) from the shared
# captures, COPIES times:
#   mix: call-rtp + message + call-basic + zeek-wireshark +
#        heplify-rtp_rtcp_sip_ipv4_udp: SIP over UDP mixed with RTP/RTCP and
#        background traffic the importer must skip;
#   sip: zeek-wireshark + message + call-basic + invite-auth + publish +
#        presence-subscribe + heplify-sip_ipv4_tcp: signalling only, some
#        over TCP.
# Import time includes correlation and writing the sealed Parquet archive.
set -euo pipefail
cd "$(dirname "$0")/.."
COPIES=${1:-40}
MIX=${2:-mix}
TESTDATA=${TESTDATA:-../shared/testdata}
cargo build --release -q -p sipvault
BIN=$PWD/target/release/sipvault
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
P=$TESTDATA/pcaps
SET=()
for _ in $(seq "$COPIES"); do
  case $MIX in
    mix) SET+=("$P/local/call-rtp.pcap" "$P/local/message.pcap" "$P/local/call-basic.pcap" \
               "$P/zeek-wireshark.pcap" "$P/heplify-rtp_rtcp_sip_ipv4_udp.pcap") ;;
    sip) SET+=("$P/zeek-wireshark.pcap" "$P/local/message.pcap" "$P/local/call-basic.pcap" \
               "$P/local/invite-auth.pcap" "$P/local/publish.pcap" "$P/local/presence-subscribe.pcap" \
               "$P/heplify-sip_ipv4_tcp.pcap") ;;
    *) echo "unknown mix $MIX (mix|sip)" >&2; exit 2 ;;
  esac
done
mergecap -a -F pcap -w "$WORK/load.pcap" "${SET[@]}"
BYTES=$(stat -c %s "$WORK/load.pcap")
PACKETS=$(capinfos -c -M "$WORK/load.pcap" | awk '/Number of packets/{print $NF}')

now() { date +%s.%N; }
T0=$(now)
SIP_TSHARK=$(tshark -r "$WORK/load.pcap" -Y sip 2>/dev/null | wc -l)
T1=$(now)
SIPVAULT_LOG=warn $BIN import pcap "$WORK/load.pcap" --data "$WORK/data" --format json > "$WORK/summary.json"
T2=$(now)
SIP_OURS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sip_messages"])' "$WORK/summary.json")
TS=$(echo "$T1 - $T0" | bc -l)
OURS=$(echo "$T2 - $T1" | bc -l)
printf 'file                 %s x %d copies, %.1f MB, %d packets\n' "$MIX" "$COPIES" "$(echo "$BYTES / 1000000" | bc -l)" "$PACKETS"
printf 'tshark -Y sip        %.2f s  %6.1f MB/s  %8.0f packets/s  (%d SIP frames)\n' "$TS" "$(echo "$BYTES / 1000000 / $TS" | bc -l)" "$(echo "$PACKETS / $TS" | bc -l)" "$SIP_TSHARK"
printf 'sipvault import      %.2f s  %6.1f MB/s  %8.0f packets/s  (%d SIP messages archived)\n' "$OURS" "$(echo "$BYTES / 1000000 / $OURS" | bc -l)" "$(echo "$PACKETS / $OURS" | bc -l)" "$SIP_OURS"
printf 'ratio                %.1fx tshark\n' "$(echo "$TS / $OURS" | bc -l)"
