//! TCP reassembly and SIP framing on arbitrary segment sequences.
//!
//! Input: repeated records of `flags (1) | seq offset (2, LE) | length (1)
//! | payload (length)`. Flags: bit 0 SYN, 1 FIN, 2+3 RST (both set), 4
//! reverse direction, 5 advance the clock by 3 s (so gap and idle
//! timeouts fire). Sequence numbers start near the 32-bit wrap.
//!
//! Checks: no panic, the memory budget is never exceeded and is fully
//! released at the end, no message exceeds the size limit, and no more
//! message bytes come out than payload bytes went in.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sipvault_collector::pcap::MemoryBudget;
use sipvault_collector::pcap::tcp::{FlowKey, Segment, StreamOutput, TcpLimits, TcpReassembler};

const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut tcp = TcpReassembler::new(TcpLimits {
        max_message: MAX_MESSAGE,
        max_flow_pending: 8192,
        gap_timeout_ns: 2_000_000_000,
        idle_timeout_ns: 20_000_000_000,
    });
    let mut budget = MemoryBudget::new(32 * 1024);
    let flow = FlowKey {
        src: "192.0.2.1:5060".parse().expect("address"),
        dst: "192.0.2.2:5060".parse().expect("address"),
    };
    let base = u32::MAX - 2000;
    let mut time_ns = 0i64;
    let mut payload_in = 0usize;
    let mut message_out = 0usize;
    let mut rest = data;
    while let [flags, lo, hi, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        if flags & 0x20 != 0 {
            time_ns += 3_000_000_000;
        }
        time_ns += 1_000;
        let segment = Segment {
            seq: base.wrapping_add(u32::from(u16::from_le_bytes([*lo, *hi]))),
            syn: flags & 0x01 != 0,
            fin: flags & 0x02 != 0,
            rst: flags & 0x0c == 0x0c,
            payload,
        };
        let key = if flags & 0x10 != 0 {
            flow.reversed()
        } else {
            flow
        };
        payload_in += payload.len();
        tcp.segment(time_ns, key, &segment, &mut budget);
        assert!(budget.used() <= budget.limit());
        message_out += drain(&mut tcp);
    }
    tcp.finish(&mut budget);
    message_out += drain(&mut tcp);
    assert_eq!(budget.used(), 0, "everything released at the end");
    assert!(message_out <= payload_in);
});

fn drain(tcp: &mut TcpReassembler) -> usize {
    let mut bytes = 0;
    while let Some(output) = tcp.poll() {
        if let StreamOutput::Sip { message, .. } = output {
            assert!(message.len() <= MAX_MESSAGE);
            bytes += message.len();
        }
    }
    bytes
}
