#!/usr/bin/env bash
# `sipvault import pcap` throughput against `tshark -r FILE -Y sip` on the
# same file in the same run.
#
#   bench/import-pcap.sh [COPIES]     (default 40)
#
# The workload is built with mergecap -a (concatenation) from the shared
# captures: COPIES x (call-rtp.pcap + message.pcap + call-basic.pcap +
# zeek-wireshark.pcap + heplify-rtp_rtcp_sip_ipv4_udp.pcap), i.e. SIP over
# UDP mixed with RTP/RTCP and background traffic the importer must skip.
# Import time includes correlation and writing the sealed Parquet archive.
set -euo pipefail
cd "$(dirname "$0")/.."
COPIES=${1:-40}
TESTDATA=${TESTDATA:-../shared/testdata}
cargo build --release -q -p sipvault
BIN=$PWD/target/release/sipvault
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
P=$TESTDATA/pcaps
SET=()
for _ in $(seq "$COPIES"); do
  SET+=("$P/local/call-rtp.pcap" "$P/local/message.pcap" "$P/local/call-basic.pcap" \
        "$P/zeek-wireshark.pcap" "$P/heplify-rtp_rtcp_sip_ipv4_udp.pcap")
done
mergecap -a -F pcap -w "$WORK/load.pcap" "${SET[@]}"
BYTES=$(stat -c %s "$WORK/load.pcap")
PACKETS=$(capinfos -c -M "$WORK/load.pcap" | awk '/Number of packets/{print $NF}')

now() { date +%s.%N; }
T0=$(now)
SIP_TSHARK=$(tshark -r "$WORK/load.pcap" -Y sip 2>/dev/null | wc -l)
T1=$(now)
$BIN import pcap "$WORK/load.pcap" --data "$WORK/data" --format json > "$WORK/summary.json"
T2=$(now)
SIP_OURS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sip_messages"])' "$WORK/summary.json")
TS=$(echo "$T1 - $T0" | bc -l)
OURS=$(echo "$T2 - $T1" | bc -l)
printf 'file                 %d copies, %.1f MB, %d packets\n' "$COPIES" "$(echo "$BYTES / 1000000" | bc -l)" "$PACKETS"
printf 'tshark -Y sip        %.2f s  %6.1f MB/s  %8.0f packets/s  (%d SIP frames)\n' "$TS" "$(echo "$BYTES / 1000000 / $TS" | bc -l)" "$(echo "$PACKETS / $TS" | bc -l)" "$SIP_TSHARK"
printf 'sipvault import      %.2f s  %6.1f MB/s  %8.0f packets/s  (%d SIP messages archived)\n' "$OURS" "$(echo "$BYTES / 1000000 / $OURS" | bc -l)" "$(echo "$PACKETS / $OURS" | bc -l)" "$SIP_OURS"
printf 'ratio                %.1fx tshark\n' "$(echo "$TS / $OURS" | bc -l)"
