//! Capture file formats: pcap and pcapng, read with `pcap-parser`, fed to
//! a [`PacketDecoder`].
//!
//! The file is streamed through a buffer that grows only as far as one
//! record needs, up to [`MAX_RECORD`]; a larger record is skipped without
//! being held in memory. Timestamps become nanoseconds since the epoch:
//! pcap by its magic (micro- or nanoseconds), pcapng by each interface's
//! `if_tsresol` and `if_tsoffset`.

use std::io::{self, Cursor, Read};

use pcap_parser::pcapng::Block;
use pcap_parser::traits::{PcapNGPacketBlock, PcapReaderIterator};
use pcap_parser::{LegacyPcapReader, PcapBlockOwned, PcapError as ParserError, PcapNGReader};
use sipvault_schemas::CapturedMessage;

use super::{ImportOptions, ImportStats, PacketDecoder, PcapError, reason};

/// First read buffer size; enough for any ordinary record.
const INITIAL_BUFFER: usize = 256 * 1024;

/// Records larger than this are skipped instead of buffered.
pub(crate) const MAX_RECORD: usize = 16 * 1024 * 1024;

/// `progress` is called whenever this many more bytes were consumed.
const PROGRESS_STEP: u64 = 1024 * 1024;

const PCAPNG_MAGIC: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];
/// pcap magics as they appear in the file: microsecond, nanosecond and
/// the "modified" (Kuznetzov) format, each little- and big-endian.
const PCAP_MAGICS: [[u8; 4]; 6] = [
    [0xD4, 0xC3, 0xB2, 0xA1],
    [0xA1, 0xB2, 0xC3, 0xD4],
    [0x4D, 0x3C, 0xB2, 0xA1],
    [0xA1, 0xB2, 0x3C, 0x4D],
    [0x34, 0xCD, 0xB2, 0xA1],
    [0xA1, 0xB2, 0xCD, 0x34],
];

/// A reader whose `read` fills the buffer unless the input ends:
/// `pcap-parser` reads the file header with a single `read` call and takes
/// a short read for a short file.
struct FullReads<R> {
    inner: R,
}

impl<R: Read> Read for FullReads<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Hand out what was read; the error comes back next call.
                Err(_) if filled > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pcap,
    PcapNg,
}

/// A pcapng interface as its Interface Description Block declares it.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link_type: u32,
    ticks_per_second: u64,
    offset_seconds: i64,
}

/// Per-file state the record loop needs besides the reader.
struct Import<'a> {
    decoder: PacketDecoder,
    stats: ImportStats,
    sink: &'a mut dyn FnMut(CapturedMessage),
    progress: &'a mut dyn FnMut(u64),
    last_progress: u64,
    /// pcap: link type, nanosecond timestamps, big-endian, record header length.
    pcap: Option<PcapFile>,
    /// pcapng: interfaces of the current section, and its byte order.
    interfaces: Vec<Interface>,
    big_endian: bool,
    /// Time of the last packet (Simple Packet Blocks carry none).
    last_time_ns: i64,
}

#[derive(Debug, Clone, Copy)]
struct PcapFile {
    link_type: u32,
    nanoseconds: bool,
    big_endian: bool,
    record_header_len: usize,
}

/// What the record loop does after looking at the reader's next result.
enum Step {
    Consumed(usize),
    Refill,
    Grow,
    Malformed,
    End(Option<&'static str>),
}

pub(super) fn import<R: Read>(
    reader: R,
    opts: &ImportOptions,
    sink: &mut dyn FnMut(CapturedMessage),
    progress: &mut dyn FnMut(u64),
) -> Result<ImportStats, PcapError> {
    let mut input = FullReads { inner: reader };
    let mut magic = [0u8; 4];
    let got = input.read(&mut magic).map_err(PcapError::Read)?;
    let format = match magic {
        _ if got < magic.len() => None,
        PCAPNG_MAGIC => Some(Format::PcapNg),
        m if PCAP_MAGICS.contains(&m) => Some(Format::Pcap),
        _ => None,
    };
    let Some(format) = format else {
        return Err(PcapError::NotCapture(format!(
            "the file starts with {:02x?}",
            &magic[..got]
        )));
    };
    let input = FullReads {
        inner: Cursor::new(magic).chain(input),
    };
    let mut import = Import {
        decoder: PacketDecoder::new(opts),
        stats: ImportStats::default(),
        sink,
        progress,
        last_progress: 0,
        pcap: None,
        interfaces: Vec::new(),
        big_endian: false,
        last_time_ns: 0,
    };
    match format {
        Format::Pcap => {
            let mut reader = LegacyPcapReader::new(INITIAL_BUFFER, input).map_err(header_error)?;
            import.run(&mut reader);
        }
        Format::PcapNg => {
            let mut reader = PcapNGReader::new(INITIAL_BUFFER, input).map_err(header_error)?;
            import.run(&mut reader);
        }
    }
    Ok(import.stats)
}

fn header_error(error: ParserError<&'static [u8]>) -> PcapError {
    match error {
        ParserError::ReadError => PcapError::Read(io::Error::other("read failed")),
        ParserError::Incomplete(_) | ParserError::Eof | ParserError::UnexpectedEof => {
            PcapError::NotCapture("the file ends inside its header".to_owned())
        }
        other => PcapError::NotCapture(format!("bad file header: {other}")),
    }
}

/// Ticks per second for a pcapng `if_tsresol` value: 10^n, or 2^n with
/// the top bit set. An impossible value falls back to microseconds.
fn ticks_per_second(tsresol: u8) -> u64 {
    let exponent = u32::from(tsresol & 0x7f);
    let ticks = if tsresol & 0x80 != 0 {
        1u64.checked_shl(exponent).filter(|_| exponent < 64)
    } else {
        10u64.checked_pow(exponent)
    };
    ticks.filter(|&t| t > 0).unwrap_or(1_000_000)
}

/// A pcapng timestamp in nanoseconds since the epoch, saturating.
fn pcapng_time_ns(ts_high: u32, ts_low: u32, interface: &Interface) -> i64 {
    let ticks = (u64::from(ts_high) << 32) | u64::from(ts_low);
    let per_second = u128::from(interface.ticks_per_second.max(1));
    let ns = u128::from(ticks) * 1_000_000_000 / per_second;
    let ns = i128::try_from(ns).unwrap_or(i128::MAX)
        + i128::from(interface.offset_seconds) * 1_000_000_000;
    i64::try_from(ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX))).unwrap_or(i64::MAX)
}

impl Import<'_> {
    fn run(&mut self, reader: &mut dyn PcapReaderIterator) {
        let mut capacity = INITIAL_BUFFER;
        loop {
            let step = match reader.next() {
                Ok((len, block)) => {
                    self.handle_block(block);
                    Step::Consumed(len)
                }
                Err(ParserError::Eof) => Step::End(None),
                Err(ParserError::Incomplete(_)) => Step::Refill,
                Err(ParserError::UnexpectedEof) => Step::End(Some(reason::TRUNCATED_FILE)),
                Err(ParserError::BufferTooSmall) => Step::Grow,
                Err(ParserError::ReadError) => Step::End(Some(reason::READ_ERROR)),
                Err(_) => Step::Malformed,
            };
            let outcome = match step {
                Step::Consumed(len) => {
                    reader.consume(len);
                    self.deliver();
                    self.report_progress(reader.consumed() as u64, false);
                    Ok(())
                }
                Step::Refill => match self.declared_record_len(reader.data()) {
                    // pcap-parser asks for more than the block says it
                    // holds: the block contradicts itself.
                    Some(len) if self.pcap.is_none() && len <= reader.data().len() => {
                        self.decoder.count_skip(reason::MALFORMED_BLOCK);
                        skip_bytes(reader, len)
                    }
                    _ => reader.refill().map_err(|_| reason::READ_ERROR),
                },
                Step::Grow => match self.declared_record_len(reader.data()) {
                    Some(len) if len > MAX_RECORD => {
                        self.decoder.count_skip(reason::OVERSIZE_RECORD);
                        skip_bytes(reader, len)
                    }
                    needed => {
                        let wanted = needed
                            .unwrap_or(capacity.saturating_mul(2))
                            .saturating_add(1)
                            .max(capacity.saturating_mul(2))
                            .min(MAX_RECORD + 64);
                        if wanted <= capacity {
                            Err(reason::OVERSIZE_RECORD)
                        } else {
                            reader.grow(wanted);
                            capacity = wanted;
                            reader.refill().map_err(|_| reason::READ_ERROR)
                        }
                    }
                },
                Step::Malformed => match self.declared_record_len(reader.data()) {
                    Some(len) if self.pcap.is_none() => {
                        self.decoder.count_skip(reason::MALFORMED_BLOCK);
                        skip_bytes(reader, len)
                    }
                    _ => Err(reason::CORRUPT_FILE),
                },
                Step::End(None) => break,
                Step::End(Some(why)) => Err(why),
            };
            if let Err(why) = outcome {
                // The rest of the file cannot be read.
                self.decoder.count_skip(why);
                break;
            }
        }
        self.decoder.finish();
        self.deliver();
        let consumed = reader.consumed() as u64;
        self.stats.bytes = consumed;
        self.stats.skipped = self.decoder.skipped();
        self.report_progress(consumed, true);
    }

    fn report_progress(&mut self, consumed: u64, last: bool) {
        if last || consumed.saturating_sub(self.last_progress) >= PROGRESS_STEP {
            self.last_progress = consumed;
            (self.progress)(consumed);
        }
    }

    fn deliver(&mut self) {
        while let Some(message) = self.decoder.poll_message() {
            self.stats.sip_messages += 1;
            (self.sink)(message);
        }
    }

    /// The length of the record at the start of `data` as its header
    /// declares it, if the header is there and the length is plausible.
    fn declared_record_len(&self, data: &[u8]) -> Option<usize> {
        let read_u32 = |at: usize, big_endian: bool| -> Option<usize> {
            let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
            let value = if big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            };
            usize::try_from(value).ok()
        };
        match self.pcap {
            Some(file) => {
                let caplen = read_u32(8, file.big_endian)?;
                caplen.checked_add(file.record_header_len)
            }
            None => {
                // A section header's byte order is its own (byte-order magic).
                let big_endian = if data.get(..4) == Some(&PCAPNG_MAGIC[..]) {
                    data.get(8..12) == Some(&[0x1A, 0x2B, 0x3C, 0x4D][..])
                } else {
                    self.big_endian
                };
                let len = read_u32(4, big_endian)?;
                (len >= 12 && len.is_multiple_of(4)).then_some(len)
            }
        }
    }

    fn handle_block(&mut self, block: PcapBlockOwned<'_>) {
        match block {
            PcapBlockOwned::LegacyHeader(header) => {
                self.pcap = Some(PcapFile {
                    // The upper bits may carry FCS information.
                    link_type: (header.network.0 as u32) & 0xFFFF,
                    nanoseconds: header.is_nanosecond_precision(),
                    big_endian: header.is_bigendian(),
                    record_header_len: if header.is_modified_format() { 24 } else { 16 },
                });
            }
            PcapBlockOwned::Legacy(record) => {
                self.stats.packets += 1;
                let Some(file) = self.pcap else { return };
                let fraction_ns = if file.nanoseconds { 1 } else { 1_000 };
                let time_ns = i64::from(record.ts_sec) * 1_000_000_000
                    + i64::from(record.ts_usec) * fraction_ns;
                self.packet(time_ns, file.link_type, record.data);
            }
            PcapBlockOwned::NG(block) => self.handle_ng_block(block),
        }
    }

    fn handle_ng_block(&mut self, block: Block<'_>) {
        match block {
            Block::SectionHeader(section) => {
                // Interfaces are numbered per section.
                self.interfaces.clear();
                self.big_endian = section.big_endian();
            }
            Block::InterfaceDescription(idb) => self.interfaces.push(Interface {
                link_type: u32::from(idb.linktype.0 as u16),
                ticks_per_second: ticks_per_second(idb.if_tsresol),
                offset_seconds: idb.if_tsoffset,
            }),
            Block::EnhancedPacket(epb) => {
                self.stats.packets += 1;
                let interface = usize::try_from(epb.if_id)
                    .ok()
                    .and_then(|i| self.interfaces.get(i))
                    .copied();
                let Some(interface) = interface else {
                    self.decoder.count_skip(reason::UNKNOWN_INTERFACE);
                    return;
                };
                let time_ns = pcapng_time_ns(epb.ts_high, epb.ts_low, &interface);
                self.packet(time_ns, interface.link_type, epb.packet_data());
            }
            Block::SimplePacket(spb) => {
                self.stats.packets += 1;
                // Simple packets belong to the first interface and carry
                // no timestamp: take the previous packet's time.
                let Some(interface) = self.interfaces.first().copied() else {
                    self.decoder.count_skip(reason::UNKNOWN_INTERFACE);
                    return;
                };
                self.packet(self.last_time_ns, interface.link_type, spb.packet_data());
            }
            Block::Unknown(_) => self.decoder.count_skip(reason::UNKNOWN_BLOCK),
            // Statistics, name resolution, secrets, journal, process and
            // custom blocks say nothing about SIP.
            _ => {}
        }
    }

    fn packet(&mut self, time_ns: i64, link_type: u32, data: &[u8]) {
        self.last_time_ns = time_ns;
        self.decoder.handle_packet(time_ns, link_type, data);
    }
}

/// Consumes `len` bytes of input, refilling as needed, without holding
/// them: for records too large or too broken to parse.
fn skip_bytes(reader: &mut dyn PcapReaderIterator, len: usize) -> Result<(), &'static str> {
    let mut left = len;
    loop {
        let take = left.min(reader.data().len());
        reader.consume(take);
        left -= take;
        if left == 0 {
            return Ok(());
        }
        reader.refill().map_err(|_| reason::READ_ERROR)?;
        if reader.data().is_empty() {
            return Err(reason::TRUNCATED_FILE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_resolutions() {
        assert_eq!(ticks_per_second(6), 1_000_000);
        assert_eq!(ticks_per_second(9), 1_000_000_000);
        assert_eq!(ticks_per_second(0x80 | 10), 1024);
        assert_eq!(ticks_per_second(0x80 | 64), 1_000_000);
        assert_eq!(ticks_per_second(20), 1_000_000);
        let micro = Interface {
            link_type: 1,
            ticks_per_second: 1_000_000,
            offset_seconds: 0,
        };
        assert_eq!(pcapng_time_ns(0, 1_500_000, &micro), 1_500_000_000);
        let nano_offset = Interface {
            ticks_per_second: 1_000_000_000,
            offset_seconds: 10,
            ..micro
        };
        assert_eq!(pcapng_time_ns(0, 5, &nano_offset), 10_000_000_005);
        let absurd = Interface {
            ticks_per_second: 1,
            offset_seconds: i64::MAX,
            ..micro
        };
        assert_eq!(pcapng_time_ns(u32::MAX, u32::MAX, &absurd), i64::MAX);
    }

    #[test]
    fn short_reads_are_filled() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut reader = FullReads {
            inner: Trickle(b"abcdef"),
        };
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).expect("read"), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(reader.read(&mut buf).expect("read"), 2);
    }
}
