//! Merging the data messages of one logical timestamp into one batch (protocol doc §3.10, G6,
//! G21), without adding latency.
//!
//! The service sends one data message per publish block per timestamp, the same number every
//! interval. The count is learned from the first interval (closed by a timestamp change or an
//! information message); from then on a batch is released the moment its last block arrives.
//! A timestamp change, an information message or the end of the channel release whatever is
//! pending, so a count that changes later never holds data back.

use super::computation::Batch;
use crate::protocol::DataBody;

#[derive(Debug, Default)]
pub struct BatchMerger {
    blocks_per_timestamp: Option<usize>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    batch: Batch,
    blocks: usize,
}

impl BatchMerger {
    /// The learned number of data messages per timestamp, once known.
    pub fn blocks_per_timestamp(&self) -> Option<usize> {
        self.blocks_per_timestamp
    }

    /// Adds one data message; pushes every batch it completes onto `out`.
    pub fn push(&mut self, body: DataBody, out: &mut Vec<Batch>) {
        if self.pending.as_ref().is_some_and(|p| p.batch.logical_timestamp_ms != body.logical_timestamp_ms) {
            self.release(out);
        }
        let pending = self.pending.get_or_insert_with(|| Pending {
            batch: Batch {
                logical_timestamp_ms: body.logical_timestamp_ms,
                max_delay_ms: body.max_delay_ms,
                points: Vec::new(),
                block_sizes: Vec::new(),
            },
            blocks: 0,
        });
        // A data message holds at most u32::MAX points (the binary count field).
        pending.batch.block_sizes.push(u32::try_from(body.points.len()).unwrap_or(u32::MAX));
        if pending.batch.points.is_empty() {
            // One message's vector becomes the batch's: no copy for single-block programs.
            pending.batch.points = body.points;
        } else {
            pending.batch.points.extend_from_slice(&body.points);
        }
        if body.max_delay_ms.is_some() {
            pending.batch.max_delay_ms = body.max_delay_ms;
        }
        pending.blocks += 1;
        if self.blocks_per_timestamp.is_some_and(|n| pending.blocks >= n) {
            self.release(out);
        }
    }

    /// An information message or the channel's end: releases what is pending.
    pub fn boundary(&mut self, out: &mut Vec<Batch>) {
        self.release(out);
    }

    fn release(&mut self, out: &mut Vec<Batch>) {
        if let Some(p) = self.pending.take() {
            // The first release fixes the count: it closed the first interval.
            self.blocks_per_timestamp.get_or_insert(p.blocks);
            out.push(p.batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataPoint, Tsid, Value};

    fn body(ts: i64, ids: &[u64]) -> DataBody {
        DataBody {
            logical_timestamp_ms: ts,
            max_delay_ms: None,
            points: ids.iter().map(|i| DataPoint { tsid: Tsid(*i), value: Value::Long(*i as i64) }).collect(),
        }
    }

    fn ids(batch: &Batch) -> Vec<u64> {
        batch.points.iter().map(|p| p.tsid.0).collect()
    }

    #[test]
    fn first_interval_is_released_by_the_info_message_then_batches_complete_at_once() {
        let mut m = BatchMerger::default();
        let mut out = Vec::new();
        m.push(body(10, &[1, 2]), &mut out);
        m.push(body(10, &[]), &mut out); // an empty block counts
        m.push(body(10, &[3]), &mut out);
        assert!(out.is_empty(), "count unknown yet");
        m.boundary(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(ids(&out[0]), [1, 2, 3]);
        assert_eq!(out[0].block_sizes, [2, 0, 1], "the block boundaries are kept");
        assert_eq!(m.blocks_per_timestamp(), Some(3));
        out.clear();
        m.push(body(20, &[1]), &mut out);
        m.push(body(20, &[]), &mut out);
        assert!(out.is_empty());
        m.push(body(20, &[3]), &mut out);
        assert_eq!(out.len(), 1, "released on its last block, not on the next timestamp");
        assert_eq!(out[0].logical_timestamp_ms, 20);
        assert_eq!(out[0].block_sizes, [1, 0, 1]);
    }

    #[test]
    fn a_timestamp_change_closes_the_first_interval_too() {
        let mut m = BatchMerger::default();
        let mut out = Vec::new();
        m.push(body(10, &[1]), &mut out);
        m.push(body(10, &[2]), &mut out);
        m.push(body(20, &[1]), &mut out);
        assert_eq!(out.iter().map(|b| b.logical_timestamp_ms).collect::<Vec<_>>(), [10]);
        assert_eq!(m.blocks_per_timestamp(), Some(2));
        m.push(body(20, &[2]), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_shorter_interval_is_released_by_the_next_timestamp_or_the_end() {
        let mut m = BatchMerger::default();
        let mut out = Vec::new();
        m.push(body(10, &[1]), &mut out);
        m.push(body(10, &[2]), &mut out);
        m.boundary(&mut out);
        m.push(body(20, &[1]), &mut out); // only one of two blocks this time
        m.push(body(30, &[1]), &mut out);
        assert_eq!(out.iter().map(|b| b.logical_timestamp_ms).collect::<Vec<_>>(), [10, 20]);
        m.boundary(&mut out);
        assert_eq!(out.iter().map(|b| b.logical_timestamp_ms).collect::<Vec<_>>(), [10, 20, 30]);
    }

    #[test]
    fn single_block_programs_release_every_message_once_learned() {
        let mut m = BatchMerger::default();
        let mut out = Vec::new();
        m.push(body(10, &[1]), &mut out);
        m.boundary(&mut out);
        for ts in [20, 30, 40] {
            m.push(body(ts, &[1]), &mut out);
        }
        assert_eq!(out.len(), 4);
    }
}
