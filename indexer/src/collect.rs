//! Finding the hits of a page and counting the matches.
//!
//! The index is sorted by time (see [`crate::index_settings`]): within a tantivy
//! segment, document ids are in time order (ties in the order they were added).
//! So the oldest `k` matches of a segment are its first `k` matches, and a
//! time-ordered page needs only the first `k` matches of each segment, not
//! every match with its time. Segments are visited oldest first, and a segment
//! whose oldest record is newer than the `k` kept so far is not searched for
//! hits at all.
//!
//! By relevance, tantivy's pruning (block-max WAND for words and unions of
//! words) skips the matches that cannot enter the top `k`; equal scores keep the
//! earlier document, which is the older one.
//!
//! The total is counted exactly up to [`TOTAL_COUNT_LIMIT`] matches, and beyond
//! that only where the index knows it without visiting the matches (a query that
//! is a single term, in a segment without deleted documents: the term's document
//! frequency). Otherwise it is reported as more than the limit ([`Total`]).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;
use tantivy::query::{Query, TermQuery, Weight};
use tantivy::{
    COLLECT_BLOCK_BUFFER_LEN, DocId, DocSet, Score, Searcher, SegmentOrdinal, SegmentReader,
    TERMINATED,
};

/// Matches counted one by one before a search reports its total as
/// [`Total::MoreThan`] this many. Counting every match of a frequent word over
/// millions of records costs as much as the rest of the search many times
/// over; like Elasticsearch's default `track_total_hits`, 10,000 is enough to
/// tell a narrow search from a broad one.
pub const TOTAL_COUNT_LIMIT: usize = 10_000;

/// How many records match a search.
///
/// Serialized as `{"relation": "exact", "value": N}` or
/// `{"relation": "more_than", "value": 10000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "relation", content = "value", rename_all = "snake_case")]
pub enum Total {
    /// Exactly this many.
    Exact(usize),
    /// More than this many ([`TOTAL_COUNT_LIMIT`]); the exact number was not counted.
    MoreThan(usize),
}

impl Total {
    /// The exact count, if it was counted.
    pub fn exact(self) -> Option<usize> {
        match self {
            Total::Exact(n) => Some(n),
            Total::MoreThan(_) => None,
        }
    }

    /// The exact count, or the number the total is known to exceed.
    pub fn at_least(self) -> usize {
        match self {
            Total::Exact(n) | Total::MoreThan(n) => n,
        }
    }
}

/// `12345`, or `more than 10000`.
impl std::fmt::Display for Total {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Padded as a whole, so that tables can align it.
        match self {
            Total::Exact(n) => f.pad(&n.to_string()),
            Total::MoreThan(n) => f.pad(&format!("more than {n}")),
        }
    }
}

/// A match with what is needed to rank it against matches of other segments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub score: Score,
    pub time: i64,
    pub segment: SegmentOrdinal,
    pub doc: DocId,
}

/// Order of the results: by relevance, score descending, then time ascending;
/// otherwise time ascending. Ties are broken by document address so that results
/// are deterministic.
fn rank_cmp(a: &Candidate, b: &Candidate, by_relevance: bool) -> Ordering {
    let score = if by_relevance {
        b.score.total_cmp(&a.score)
    } else {
        Ordering::Equal
    };
    score
        .then(a.time.cmp(&b.time))
        .then(a.segment.cmp(&b.segment))
        .then(a.doc.cmp(&b.doc))
}

/// Counts matches up to [`TOTAL_COUNT_LIMIT`] across the segments of a search.
struct Counter {
    /// The query is one term: a segment without deletes knows its count.
    term_query: bool,
    /// Matches counted so far, exactly.
    counted: usize,
    /// A segment was not counted to its end (only once `counted` is past the limit).
    cut: bool,
}

impl Counter {
    fn new(query: &dyn Query) -> Counter {
        Counter {
            term_query: query.is::<TermQuery>(),
            counted: 0,
            cut: false,
        }
    }

    /// Whether the segment's count comes from the term dictionary.
    fn knows_count(&self, segment: &SegmentReader) -> bool {
        self.term_query && segment.alive_bitset().is_none()
    }

    /// How many more matches to count one by one before the total is past the limit.
    fn budget(&self) -> usize {
        (TOTAL_COUNT_LIMIT + 1).saturating_sub(self.counted)
    }

    fn total(&self) -> Total {
        if self.cut {
            Total::MoreThan(TOTAL_COUNT_LIMIT)
        } else {
            Total::Exact(self.counted)
        }
    }
}

/// The `wanted` oldest matches and the total.
pub(crate) fn in_time_order(
    searcher: &Searcher,
    query: &dyn Query,
    weight: &dyn Weight,
    wanted: usize,
) -> tantivy::Result<(Vec<Candidate>, Total)> {
    let mut counter = Counter::new(query);
    let mut segments = Vec::with_capacity(searcher.segment_readers().len());
    for (ord, reader) in searcher.segment_readers().iter().enumerate() {
        let time = reader.fast_fields().i64("time")?;
        segments.push((ord as SegmentOrdinal, reader, time));
    }
    // Oldest segments first: their hits let newer segments be skipped.
    segments.sort_by_key(|(ord, _, time)| (time.min_value(), *ord));
    let mut best: Vec<Candidate> = Vec::new();
    let mut buffer = [0 as DocId; COLLECT_BLOCK_BUFFER_LEN];
    for (ord, reader, time) in segments {
        let knows_count = counter.knows_count(reader);
        // `min_value` is at most the segment's oldest time; an equal time may
        // still win on the segment ordinal.
        let take = match best.last() {
            // `best` is sorted whenever it holds a full page.
            Some(worst) if best.len() >= wanted && worst.time < time.min_value() => 0,
            _ => wanted,
        };
        let budget = if knows_count { 0 } else { counter.budget() };
        if knows_count {
            counter.counted += weight.count(reader)? as usize;
        }
        if take == 0 && budget == 0 {
            // Nothing to find here, and the count is known or already past the limit.
            counter.cut |= !knows_count;
            continue;
        }
        let alive = reader.alive_bitset();
        let mut scorer = weight.scorer(reader, 1.0)?;
        let mut taken = 0;
        let mut counted = 0;
        while (taken < take || counted < budget) && scorer.doc() != TERMINATED {
            let n = scorer.fill_buffer(&mut buffer);
            for &doc in &buffer[..n] {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                counted += 1;
                if taken < take {
                    taken += 1;
                    best.push(Candidate {
                        score: 0.0,
                        time: time.first(doc).unwrap_or(i64::MIN),
                        segment: ord,
                        doc,
                    });
                }
            }
        }
        if !knows_count {
            counter.counted += counted;
            counter.cut |= scorer.doc() != TERMINATED;
        }
        // Only a full page needs its worst hit known (to skip segments); an
        // export (every match) is sorted once at the end.
        if best.len() >= wanted {
            best.sort_by(|a, b| rank_cmp(a, b, false));
            best.truncate(wanted);
        }
    }
    best.sort_by(|a, b| rank_cmp(a, b, false));
    Ok((best, counter.total()))
}

/// A match within one segment, ordered so that the heap's top is the worst kept:
/// lower score, or (in a segment in time order) the same score and later.
#[derive(Debug, Clone, Copy)]
struct Scored {
    score: Score,
    doc: DocId,
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.doc.cmp(&other.doc))
    }
}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}

/// The `wanted` best matches by score (then time) and the total. `weight` must
/// have been built with scoring enabled.
pub(crate) fn by_relevance(
    searcher: &Searcher,
    query: &dyn Query,
    weight: &dyn Weight,
    wanted: usize,
) -> tantivy::Result<(Vec<Candidate>, Total)> {
    let mut counter = Counter::new(query);
    let mut best: Vec<Candidate> = Vec::new();
    let mut buffer = [0 as DocId; COLLECT_BLOCK_BUFFER_LEN];
    for (ord, reader) in searcher.segment_readers().iter().enumerate() {
        let mut heap: BinaryHeap<Scored> = BinaryHeap::new();
        let mut offer = |doc: DocId, score: Score| -> Score {
            let s = Scored { score, doc };
            if heap.len() < wanted {
                heap.push(s);
            } else if heap.peek().is_some_and(|worst| s < *worst) {
                heap.pop();
                heap.push(s);
            }
            match heap.peek() {
                Some(worst) if heap.len() >= wanted => worst.score,
                _ => Score::MIN,
            }
        };
        match reader.alive_bitset() {
            Some(alive) => weight.for_each(reader, &mut |doc, score| {
                if alive.is_alive(doc) {
                    offer(doc, score);
                }
            })?,
            // Only matches scoring above the returned threshold are offered: an
            // equal score comes from a later document, which ranks lower.
            None => weight.for_each_pruning(Score::MIN, reader, &mut offer)?,
        }
        let time = reader.fast_fields().i64("time")?;
        best.extend(heap.into_iter().map(|s| Candidate {
            score: s.score,
            time: time.first(s.doc).unwrap_or(i64::MIN),
            segment: ord as SegmentOrdinal,
            doc: s.doc,
        }));
        count_segment(&mut counter, weight, reader, &mut buffer)?;
    }
    best.sort_by(|a, b| rank_cmp(a, b, true));
    best.truncate(wanted);
    Ok((best, counter.total()))
}

/// Adds a segment's matches to the count, one by one up to the limit.
fn count_segment(
    counter: &mut Counter,
    weight: &dyn Weight,
    reader: &SegmentReader,
    buffer: &mut [DocId; COLLECT_BLOCK_BUFFER_LEN],
) -> tantivy::Result<()> {
    if counter.knows_count(reader) {
        counter.counted += weight.count(reader)? as usize;
        return Ok(());
    }
    let budget = counter.budget();
    if budget == 0 {
        counter.cut = true;
        return Ok(());
    }
    let alive = reader.alive_bitset();
    let mut scorer = weight.scorer(reader, 1.0)?;
    let mut counted = 0;
    while counted < budget && scorer.doc() != TERMINATED {
        let n = scorer.fill_buffer(buffer);
        counted += match alive {
            Some(a) => buffer[..n].iter().filter(|&&d| a.is_alive(d)).count(),
            None => n,
        };
    }
    counter.counted += counted;
    counter.cut |= scorer.doc() != TERMINATED;
    Ok(())
}

/// Every match, counted exactly (for callers that need the number, not a page).
pub(crate) fn count_all(searcher: &Searcher, weight: &dyn Weight) -> tantivy::Result<usize> {
    let mut total = 0;
    for reader in searcher.segment_readers() {
        total += weight.count(reader)? as usize;
    }
    Ok(total)
}
