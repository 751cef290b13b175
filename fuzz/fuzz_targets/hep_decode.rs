//! HEP decoding on arbitrary bytes: as one datagram, and as a HEP3 TCP
//! stream cut into pieces by the first byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sipvault_collector::hep::{HEP3_MAX_LEN, HepStreamDecoder, decode};

const MAX_PAYLOAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = decode(data, MAX_PAYLOAD) {
        assert!(packet.payload.len() <= MAX_PAYLOAD);
        let _ = packet.to_captured(0);
    }

    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut stream = HepStreamDecoder::new(HEP3_MAX_LEN);
    for chunk in data.chunks(piece) {
        stream.push(chunk);
        while let Ok(Some(packet)) = stream.next_packet() {
            assert!(packet.len() <= HEP3_MAX_LEN);
            let _ = decode(&packet, MAX_PAYLOAD);
        }
        assert!(stream.buffered() <= data.len());
    }
});
