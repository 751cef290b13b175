//! IPv4 and IPv6 fragment reassembly, bounded in memory and time.
//!
//! A fragment set is keyed by addresses, identification and protocol
//! (RFC 791 / RFC 8200). Memory is charged to the import's shared
//! [`MemoryBudget`]; a set still incomplete [`FRAGMENT_TIMEOUT_NS`] of
//! capture time after its first fragment is dropped and counted, as Linux
//! does after `ipfrag_time`. Overlapping fragments overwrite earlier bytes
//! (captures repeat fragments on retransmission; the bytes are the same).
//!
//! Not etherparse's `IpDefragPool`: it has no memory bound or timeout, and
//! exposes uninitialised buffer bytes while a set is incomplete.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use super::reason;
use super::tcp::{MemoryBudget, Skips, count};

/// How long an incomplete fragment set is kept (Linux `ipfrag_time`).
pub(crate) const FRAGMENT_TIMEOUT_NS: i64 = 30_000_000_000;

/// Bytes charged per set on top of its data (map entry, range list).
const SET_OVERHEAD: usize = 128;

/// An IP datagram cannot be longer than this (16-bit lengths).
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FragmentKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub identification: u32,
    pub protocol: u8,
}

/// One fragment: its payload and where it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fragment<'a> {
    pub key: FragmentKey,
    /// Byte offset of `payload` in the reassembled datagram.
    pub offset: usize,
    pub more_fragments: bool,
    pub payload: &'a [u8],
}

#[derive(Debug)]
struct FragmentSet {
    data: Vec<u8>,
    /// Received byte ranges, sorted and merged.
    received: Vec<(usize, usize)>,
    /// Known once the last fragment (MF clear) arrived.
    total_len: Option<usize>,
    first_seen_ns: i64,
    charged: usize,
}

impl FragmentSet {
    fn is_complete(&self) -> bool {
        self.total_len
            .is_some_and(|total| self.received.as_slice() == [(0, total)])
    }

    fn mark_received(&mut self, start: usize, end: usize) {
        let mut merged = (start, end);
        self.received.retain(|&(s, e)| {
            let touches = s <= merged.1 && merged.0 <= e;
            if touches {
                merged = (merged.0.min(s), merged.1.max(e));
            }
            !touches
        });
        let at = self.received.partition_point(|&(s, _)| s < merged.0);
        self.received.insert(at, merged);
    }
}

/// Reassembles fragmented IP payloads.
#[derive(Debug, Default)]
pub(crate) struct Defragmenter {
    sets: HashMap<FragmentKey, FragmentSet>,
}

impl Defragmenter {
    /// Adds a fragment; returns the reassembled payload once complete.
    pub(crate) fn add(
        &mut self,
        now_ns: i64,
        fragment: &Fragment<'_>,
        budget: &mut MemoryBudget,
        skips: &mut Skips,
    ) -> Option<Vec<u8>> {
        let len = fragment.payload.len();
        let start = fragment.offset;
        let end = start.saturating_add(len);
        // Every fragment but the last carries a multiple of 8 bytes.
        let misaligned = fragment.more_fragments && !len.is_multiple_of(8);
        if end > MAX_DATAGRAM || misaligned {
            self.drop_set(&fragment.key, budget);
            count(skips, reason::FRAGMENT_INVALID);
            return None;
        }
        let set = match self.sets.entry(fragment.key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                if !budget.try_reserve(SET_OVERHEAD) {
                    count(skips, reason::REASSEMBLY_MEMORY);
                    return None;
                }
                entry.insert(FragmentSet {
                    data: Vec::new(),
                    received: Vec::new(),
                    total_len: None,
                    first_seen_ns: now_ns,
                    charged: SET_OVERHEAD,
                })
            }
        };
        let conflicting = match set.total_len {
            Some(total) => end > total || (!fragment.more_fragments && end != total),
            None => !fragment.more_fragments && set.received.last().is_some_and(|&(_, e)| e > end),
        };
        if conflicting {
            self.drop_set(&fragment.key, budget);
            count(skips, reason::FRAGMENT_INVALID);
            return None;
        }
        if end > set.data.len() {
            let growth = end - set.data.len();
            if !budget.try_reserve(growth) {
                count(skips, reason::REASSEMBLY_MEMORY);
                return None;
            }
            set.charged += growth;
            set.data.resize(end, 0);
        }
        set.data[start..end].copy_from_slice(fragment.payload);
        set.mark_received(start, end);
        if !fragment.more_fragments {
            set.total_len = Some(end);
        }
        if !set.is_complete() {
            return None;
        }
        let set = self.sets.remove(&fragment.key)?;
        budget.release(set.charged);
        let mut data = set.data;
        data.truncate(set.total_len.unwrap_or(0));
        Some(data)
    }

    /// Drops sets older than the timeout, counting each.
    pub(crate) fn expire(&mut self, now_ns: i64, budget: &mut MemoryBudget, skips: &mut Skips) {
        self.sets.retain(|_, set| {
            let keep = now_ns.saturating_sub(set.first_seen_ns) < FRAGMENT_TIMEOUT_NS;
            if !keep {
                budget.release(set.charged);
                count(skips, reason::FRAGMENT_TIMEOUT);
            }
            keep
        });
    }

    /// End of capture: every set still open is incomplete.
    pub(crate) fn finish(&mut self, budget: &mut MemoryBudget, skips: &mut Skips) {
        for (_, set) in self.sets.drain() {
            budget.release(set.charged);
            count(skips, reason::FRAGMENT_TIMEOUT);
        }
    }

    fn drop_set(&mut self, key: &FragmentKey, budget: &mut MemoryBudget) {
        if let Some(set) = self.sets.remove(key) {
            budget.release(set.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key() -> FragmentKey {
        FragmentKey {
            src: Ipv4Addr::new(10, 0, 0, 1).into(),
            dst: Ipv4Addr::new(10, 0, 0, 2).into(),
            identification: 7,
            protocol: 17,
        }
    }

    fn frag(offset: usize, more: bool, payload: &[u8]) -> Fragment<'_> {
        Fragment {
            key: key(),
            offset,
            more_fragments: more,
            payload,
        }
    }

    #[test]
    fn out_of_order_and_repeated_fragments_reassemble() {
        let data: Vec<u8> = (0..40u8).collect();
        let mut d = Defragmenter::default();
        let mut budget = MemoryBudget::new(1 << 20);
        let mut skips = Skips::new();
        assert_eq!(
            d.add(0, &frag(32, false, &data[32..]), &mut budget, &mut skips),
            None
        );
        assert_eq!(
            d.add(1, &frag(8, true, &data[8..24]), &mut budget, &mut skips),
            None
        );
        assert_eq!(
            d.add(2, &frag(8, true, &data[8..24]), &mut budget, &mut skips),
            None
        );
        assert_eq!(
            d.add(3, &frag(24, true, &data[24..32]), &mut budget, &mut skips),
            None
        );
        let whole = d.add(4, &frag(0, true, &data[..8]), &mut budget, &mut skips);
        assert_eq!(whole.as_deref(), Some(&data[..]));
        assert_eq!(budget.used(), 0);
        assert!(skips.is_empty());
    }

    #[test]
    fn invalid_and_timed_out_sets_are_counted() {
        let mut d = Defragmenter::default();
        let mut budget = MemoryBudget::new(1 << 20);
        let mut skips = Skips::new();
        d.add(0, &frag(0, true, &[0; 7]), &mut budget, &mut skips);
        assert_eq!(skips.get(reason::FRAGMENT_INVALID), Some(&1));
        d.add(0, &frag(65_528, false, &[0; 16]), &mut budget, &mut skips);
        assert_eq!(skips.get(reason::FRAGMENT_INVALID), Some(&2));
        d.add(0, &frag(0, true, &[0; 8]), &mut budget, &mut skips);
        d.expire(FRAGMENT_TIMEOUT_NS - 1, &mut budget, &mut skips);
        assert!(!d.sets.is_empty());
        d.expire(FRAGMENT_TIMEOUT_NS, &mut budget, &mut skips);
        assert_eq!(skips.get(reason::FRAGMENT_TIMEOUT), Some(&1));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn memory_bound_is_kept() {
        let mut d = Defragmenter::default();
        let mut budget = MemoryBudget::new(SET_OVERHEAD + 100);
        let mut skips = Skips::new();
        d.add(0, &frag(0, true, &[0; 64]), &mut budget, &mut skips);
        d.add(0, &frag(64, true, &[0; 64]), &mut budget, &mut skips);
        assert_eq!(skips.get(reason::REASSEMBLY_MEMORY), Some(&1));
        assert!(budget.used() <= budget.limit());
    }
}
