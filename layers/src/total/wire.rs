//! TOTAL's wire format: one kind byte, then what that kind needs. The layout
//! is drawn in the module essay; this file encodes and checks it.
//!
//! Decoding checks every bound that does not depend on the receiver's view
//! (run counts and sizes, against `batch_msgs`, which every member shares);
//! ranks are checked against the view by the layer, and only when the runs
//! are about to be used.

use strata_stack::codec::{varint_len, DecodeResult, Malformed, Reader, Writer, MAX_VARINT_LEN};

/// Message kinds (the first header byte).
pub(super) mod kind {
    /// A cast that asked for FIFO order only: never named by a run.
    pub const UNORDERED: u8 = 1;
    /// A cast delivered where the sequencer's runs place it.
    pub const ORDERED: u8 = 2;
    /// The sequencer's own ordered cast: runs, then this message.
    pub const SEQUENCED: u8 = 3;
    /// An announcement: runs alone, no payload.
    pub const ORDER: u8 = 4;
    /// A point-to-point send or an out-of-band cast: passed on at once.
    pub const PLAIN: u8 = 5;
}

/// "The next `count` ordered casts of the member of rank `rank`."
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Run {
    pub rank: u32,
    pub count: u32,
}

/// Bytes a rank takes at most in a run, for the honest header bound: a
/// varint of three bytes covers ranks below 2^21, far beyond any view a
/// member could hold. A sequencer checks what it writes against the bound
/// (see [`fits`]), so even a larger view never produces a longer header.
pub(super) const MAX_RANK_LEN: usize = 3;

/// A decoded TOTAL header. The runs of a sequenced cast or an announcement
/// are decoded into a buffer the caller owns and reuses (a header names up to
/// `batch_msgs` runs: more than any inline array would hold, and no
/// allocation per announcement).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Header {
    /// A data cast from anyone: `ordered` waits for a run, otherwise only
    /// for its sender's earlier casts.
    Data { ts: u64, ordered: bool },
    /// The sequencer's own ordered cast, made in the view whose tag is
    /// `view`: deliver the runs, then this message.
    Sequenced { ts: u64, view: u32 },
    /// An announcement made in the view whose tag is `view`.
    Order { view: u32 },
    /// A send or an out-of-band cast.
    Plain,
}

/// The most bytes the runs of one header take: at most `batch` runs (each
/// names at least one message, and a header names at most `batch`).
pub(super) fn max_runs_len(batch: u32) -> usize {
    varint_len(u64::from(batch)) + batch as usize * (MAX_RANK_LEN + varint_len(u64::from(batch)))
}

/// The most bytes any TOTAL header takes (a sequenced cast's).
pub(super) fn max_header_len(batch: u32) -> usize {
    1 + MAX_VARINT_LEN + 4 + max_runs_len(batch)
}

/// Bytes `run` takes on the wire.
pub(super) fn run_len(run: Run) -> usize {
    varint_len(u64::from(run.rank)) + varint_len(u64::from(run.count))
}

/// Whether runs of `bytes` total bytes (as [`run_len`] counts them) plus the
/// run count fit the bound for `batch`.
pub(super) fn fits(runs: usize, bytes: usize, batch: u32) -> bool {
    varint_len(runs as u64) + bytes <= max_runs_len(batch)
}

fn encode_runs<'a>(w: &mut Writer, runs: impl ExactSizeIterator<Item = &'a Run>) {
    w.varint(runs.len() as u64);
    for r in runs {
        w.varint(u64::from(r.rank)).varint(u64::from(r.count));
    }
}

/// Writes a data header.
pub(super) fn encode_data(w: &mut Writer, ts: u64, ordered: bool) {
    w.u8(if ordered { kind::ORDERED } else { kind::UNORDERED }).varint(ts);
}

/// Writes the header of the sequencer's own ordered cast.
pub(super) fn encode_sequenced<'a>(w: &mut Writer, ts: u64, view: u32, runs: impl ExactSizeIterator<Item = &'a Run>) {
    w.u8(kind::SEQUENCED).varint(ts).u32(view);
    encode_runs(w, runs);
}

/// Writes an announcement.
pub(super) fn encode_order<'a>(w: &mut Writer, view: u32, runs: impl ExactSizeIterator<Item = &'a Run>) {
    w.u8(kind::ORDER).u32(view);
    encode_runs(w, runs);
}

/// Reads runs: at most `batch` of them, each naming 1 to `batch` messages,
/// `batch` in all (what a correct sequencer can have pending), into `runs`
/// (empty).
fn decode_runs(r: &mut Reader<'_>, batch: u32, runs: &mut Vec<Run>) -> DecodeResult<()> {
    let n = r.varint_max(u64::from(batch), "too_many_runs")?;
    let mut total: u64 = 0;
    for _ in 0..n {
        let rank = r.varint_max(u64::from(u32::MAX), "bad_rank")? as u32;
        let count = r.varint_max(u64::from(batch), "run_too_long")?;
        if count == 0 {
            return Err(Malformed("empty_run"));
        }
        total += count;
        if total > u64::from(batch) {
            return Err(Malformed("run_too_long"));
        }
        runs.push(Run { rank, count: count as u32 });
    }
    Ok(())
}

impl Header {
    /// Reads a header; `batch` is the shared `batch_msgs` parameter. The
    /// runs of a sequenced cast or an announcement go to `runs` (cleared
    /// first; it holds at most `batch` runs, so a buffer with that capacity
    /// never grows).
    pub(super) fn decode(r: &mut Reader<'_>, batch: u32, runs: &mut Vec<Run>) -> DecodeResult<Header> {
        runs.clear();
        match r.u8().map_err(|_| Malformed("empty"))? {
            kind::UNORDERED => Ok(Header::Data { ts: r.varint()?, ordered: false }),
            kind::ORDERED => Ok(Header::Data { ts: r.varint()?, ordered: true }),
            kind::SEQUENCED => {
                let ts = r.varint()?;
                let view = r.u32()?;
                decode_runs(r, batch, runs)?;
                Ok(Header::Sequenced { ts, view })
            }
            kind::ORDER => {
                let view = r.u32()?;
                decode_runs(r, batch, runs)?;
                // An announcement is all header: anything after it is not ours.
                r.finish()?;
                Ok(Header::Order { view })
            }
            kind::PLAIN => Ok(Header::Plain),
            _ => Err(Malformed("unknown_kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], batch: u32) -> DecodeResult<(Header, Vec<Run>)> {
        let mut runs = vec![Run { rank: 9, count: 9 }];
        let h = Header::decode(&mut Reader::new(bytes), batch, &mut runs)?;
        Ok((h, runs))
    }

    #[test]
    fn headers_round_trip_and_stay_within_the_bound() {
        let runs = [Run { rank: 2, count: 3 }, Run { rank: (1 << 21) - 1, count: 29 }];
        let mut w = Writer::new();
        encode_sequenced(&mut w, u64::MAX, 0xdead_beef, runs.iter());
        assert!(w.len() <= max_header_len(32), "{} > {}", w.len(), max_header_len(32));
        assert_eq!(decode(w.as_slice(), 32), Ok((Header::Sequenced { ts: u64::MAX, view: 0xdead_beef }, runs.to_vec())));
        let mut w = Writer::new();
        encode_order(&mut w, 7, runs.iter());
        assert_eq!(decode(w.as_slice(), 32), Ok((Header::Order { view: 7 }, runs.to_vec())));
        let mut w = Writer::new();
        encode_data(&mut w, 300, false);
        assert_eq!(w.as_slice(), &[kind::UNORDERED, 0xac, 0x02]);
        assert_eq!(decode(w.as_slice(), 32), Ok((Header::Data { ts: 300, ordered: false }, vec![])));
    }

    #[test]
    fn the_bound_covers_a_full_batch_of_single_runs_with_large_ranks() {
        let runs: Vec<Run> = (0..32).map(|i| Run { rank: (1 << 21) - 1 - i, count: 1 }).collect();
        let bytes: usize = runs.iter().map(|r| run_len(*r)).sum();
        assert!(fits(runs.len(), bytes, 32));
        let mut w = Writer::new();
        encode_sequenced(&mut w, u64::MAX, 0, runs.iter());
        assert_eq!(w.len(), max_header_len(32));
        // A rank beyond 2^21 does not fit a full batch: the sequencer splits.
        let big = Run { rank: 1 << 21, count: 1 };
        assert!(!fits(32, bytes - run_len(runs[0]) + run_len(big), 32));
    }

    #[test]
    fn run_counts_are_bounded_by_the_batch() {
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 5], 4), Err(Malformed("too_many_runs")));
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 1, 0, 5], 4), Err(Malformed("run_too_long")));
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 2, 0, 3, 1, 2], 4), Err(Malformed("run_too_long")));
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 1, 0, 0], 4), Err(Malformed("empty_run")));
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 1, 0, 4, 9], 4), Err(Malformed("trailing_bytes")));
        assert_eq!(decode(&[kind::ORDER, 0, 0, 0, 0, 1, 1, 4], 4), Ok((Header::Order { view: 0 }, vec![Run { rank: 1, count: 4 }])));
    }
}
