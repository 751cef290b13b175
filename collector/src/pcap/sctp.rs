//! SCTP (RFC 9260) as far as SIP over SCTP (RFC 4168) needs it: the common
//! header's ports and the user data of DATA and I-DATA (RFC 8260) chunks.
//! Each unfragmented user message is one SIP message; pieces of
//! fragmented ones are reported as such and not reassembled.

/// Common header: source port, destination port, verification tag, checksum.
const COMMON_HEADER_LEN: usize = 12;
const CHUNK_HEADER_LEN: usize = 4;
const CHUNK_DATA: u8 = 0;
const CHUNK_IDATA: u8 = 64;
/// DATA: chunk header + TSN, stream id, stream sequence number, PPID.
const DATA_HEADER_LEN: usize = 16;
/// I-DATA: chunk header + TSN, stream id, reserved, MID, PPID/FSN.
const IDATA_HEADER_LEN: usize = 20;
/// DATA flags: B (first piece) and E (last piece) of a user message.
const FLAG_BEGIN: u8 = 0x02;
const FLAG_END: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserData<'a> {
    /// A whole user message.
    Message(&'a [u8]),
    /// One piece of a fragmented user message.
    Fragment,
}

/// An SCTP packet: ports and the chunks after the common header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SctpPacket<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    chunks: &'a [u8],
}

/// Reads the common header; None if the packet is shorter than it.
pub(crate) fn parse(packet: &[u8]) -> Option<SctpPacket<'_>> {
    let (header, chunks) = packet.split_first_chunk::<COMMON_HEADER_LEN>()?;
    Some(SctpPacket {
        src_port: u16::from_be_bytes([header[0], header[1]]),
        dst_port: u16::from_be_bytes([header[2], header[3]]),
        chunks,
    })
}

impl<'a> SctpPacket<'a> {
    /// The user data of every DATA / I-DATA chunk, in order. An `Err`
    /// item means the chunk list is malformed; iteration stops after it.
    pub(crate) fn user_data(&self) -> UserDataIter<'a> {
        UserDataIter {
            rest: self.chunks,
            failed: false,
        }
    }
}

pub(crate) struct UserDataIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for UserDataIter<'a> {
    type Item = Result<UserData<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && !self.rest.is_empty() {
            let Some(header) = self.rest.first_chunk::<CHUNK_HEADER_LEN>() else {
                self.failed = true;
                return Some(Err(()));
            };
            let (kind, flags) = (header[0], header[1]);
            let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let Some(chunk) = self
                .rest
                .get(..length)
                .filter(|_| length >= CHUNK_HEADER_LEN)
            else {
                self.failed = true;
                return Some(Err(()));
            };
            // Chunks are padded to a multiple of 4; the last one may omit it.
            let padded = length.next_multiple_of(4).min(self.rest.len());
            self.rest = &self.rest[padded..];
            let header_len = match kind {
                CHUNK_DATA => DATA_HEADER_LEN,
                CHUNK_IDATA => IDATA_HEADER_LEN,
                _ => continue,
            };
            let Some(data) = chunk.get(header_len..) else {
                self.failed = true;
                return Some(Err(()));
            };
            let whole = flags & (FLAG_BEGIN | FLAG_END) == FLAG_BEGIN | FLAG_END;
            return Some(Ok(if whole {
                UserData::Message(data)
            } else {
                UserData::Fragment
            }));
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An SCTP packet with one DATA chunk per `(flags, data)`.
    pub(crate) fn packet(src_port: u16, dst_port: u16, chunks: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&src_port.to_be_bytes());
        out.extend_from_slice(&dst_port.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
        for (tsn, (flags, data)) in chunks.iter().enumerate() {
            let length = u16::try_from(DATA_HEADER_LEN + data.len()).expect("chunk fits");
            out.extend_from_slice(&[CHUNK_DATA, *flags]);
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(&u32::try_from(tsn).expect("tsn").to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn bundled_data_chunks() {
        let p = packet(5060, 5061, &[(3, b"abc"), (2, b"part"), (3, b"defgh")]);
        let sctp = parse(&p).expect("header");
        assert_eq!((sctp.src_port, sctp.dst_port), (5060, 5061));
        let items: Vec<_> = sctp.user_data().collect();
        assert_eq!(
            items,
            vec![
                Ok(UserData::Message(b"abc")),
                Ok(UserData::Fragment),
                Ok(UserData::Message(b"defgh")),
            ]
        );
    }

    #[test]
    fn malformed_chunks_stop_iteration() {
        let mut p = packet(1, 2, &[(3, b"abc")]);
        p[14..16].copy_from_slice(&200u16.to_be_bytes());
        let sctp = parse(&p).expect("header");
        assert_eq!(sctp.user_data().collect::<Vec<_>>(), vec![Err(())]);
        p[14..16].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(parse(&p).expect("header").user_data().count(), 1);
        assert!(parse(&[0; 11]).is_none());
        // A chunk header of another type (INIT) is skipped.
        let init = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 4];
        assert_eq!(parse(&init).expect("header").user_data().count(), 0);
    }
}
