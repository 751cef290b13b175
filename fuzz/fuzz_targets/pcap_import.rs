//! A whole capture-file import on arbitrary bytes: no panic, bounded
//! output, and the counters agree with what was emitted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sipvault_collector::pcap::{ImportOptions, import_reader};

fuzz_target!(|data: &[u8]| {
    let opts = ImportOptions {
        source: "fuzz".to_owned(),
        max_message: 8192,
        max_reassembly_bytes: 256 * 1024,
    };
    let mut emitted = 0u64;
    let mut last_progress = 0u64;
    let result = import_reader(
        data,
        &opts,
        &mut |message| {
            assert!(message.raw.len() <= opts.max_message);
            emitted += 1;
        },
        &mut |consumed| {
            assert!(consumed >= last_progress && consumed <= data.len() as u64);
            last_progress = consumed;
        },
    );
    if let Ok(stats) = result {
        assert_eq!(stats.sip_messages, emitted);
        assert!(stats.bytes <= data.len() as u64);
    }
});
