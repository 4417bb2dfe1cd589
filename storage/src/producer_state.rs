//! Idempotent-producer state of one partition, like Kafka's ProducerStateManager: per producer
//! id, its epoch and the last `PRODUCER_BATCHES_KEPT` batches (sequences and offsets), used to
//! drop retried duplicates and refuse gaps.
//!
//! Concurrency contract: plain data inside the log's state; `check` is pure so a refused append
//! leaves it untouched, and `record` runs only once the append is accepted.

use crate::batch::BatchHeader;
use crate::constants::{PRODUCERS_MAX, PRODUCER_BATCHES_KEPT};
use crate::error::StorageError;
use crate::Offset;
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchMetadata {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Clone, Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMetadata>,
    last_offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Not idempotent, unknown producer, or the next sequence: append it.
    Fresh,
    /// A retry of a batch we already have, at these offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
}

#[derive(Default, Debug)]
pub(crate) struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
}

/// The sequence after `sequence`, wrapping to 0 after i32::MAX as Kafka does.
fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0 && !header.is_control()
}

impl ProducerStateManager {
    /// Checks one batch against the state, without changing it.
    pub(crate) fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, StorageError> {
        if !is_idempotent(header) {
            return Ok(SequenceCheck::Fresh);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return Ok(SequenceCheck::Fresh);
        };
        let producer_id = header.producer_id;
        if header.producer_epoch < entry.epoch {
            return Err(StorageError::InvalidProducerEpoch {
                producer_id,
                current: entry.epoch,
                got: header.producer_epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            if header.base_sequence != 0 {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    got: header.base_sequence,
                });
            }
            return Ok(SequenceCheck::Fresh);
        }
        let last_sequence = header.last_sequence();
        let duplicate = entry.batches.iter().find(|batch| {
            batch.first_sequence == header.base_sequence && batch.last_sequence == last_sequence
        });
        if let Some(batch) = duplicate {
            return Ok(SequenceCheck::Duplicate {
                base_offset: batch.base_offset,
                last_offset: batch.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(header.base_sequence, |batch| {
            next_sequence(batch.last_sequence)
        });
        if header.base_sequence != expected {
            return Err(StorageError::OutOfOrderSequence {
                producer_id,
                expected,
                got: header.base_sequence,
            });
        }
        Ok(SequenceCheck::Fresh)
    }

    /// Records an appended batch whose offsets are now assigned.
    pub(crate) fn record(&mut self, header: &BatchHeader) {
        if !is_idempotent(header) {
            return;
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_KEPT),
                last_offset: -1,
            });
        if entry.epoch != header.producer_epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMetadata {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
        entry.last_offset = header.last_offset();
        assert!(entry.batches.len() <= PRODUCER_BATCHES_KEPT);
        self.evict_if_full();
    }

    /// The last offset each known producer wrote. The log cleaner keeps the batch ending there
    /// (empty if need be), as Kafka does, so a restart rebuilds the producer's sequence state.
    pub(crate) fn last_offsets(&self) -> HashMap<i64, i64> {
        self.producers
            .iter()
            .map(|(producer_id, entry)| (*producer_id, entry.last_offset))
            .collect()
    }

    /// Forgets the producer whose last write is oldest once past `PRODUCERS_MAX`.
    fn evict_if_full(&mut self) {
        if self.producers.len() <= PRODUCERS_MAX {
            return;
        }
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, entry)| entry.last_offset)
            .map(|(producer_id, _)| *producer_id);
        if let Some(producer_id) = oldest {
            self.producers.remove(&producer_id);
        }
        assert!(self.producers.len() <= PRODUCERS_MAX);
    }

    /// `check_append` as the logs' `check_sequence` reports it: `None` to append, the
    /// original (base, last) offsets for a retry.
    pub(crate) fn duplicate_of(
        &self,
        headers: &[BatchHeader],
    ) -> Result<Option<(Offset, Offset)>, StorageError> {
        Ok(match self.check_append(headers)? {
            SequenceCheck::Fresh => None,
            SequenceCheck::Duplicate {
                base_offset,
                last_offset,
            } => Some((Offset(base_offset), Offset(last_offset))),
        })
    }

    /// Checks every batch of one append in order, as if the earlier ones were already recorded.
    /// All duplicates: the offsets of the first and last original. A mix: out of order.
    pub(crate) fn check_append(
        &self,
        headers: &[BatchHeader],
    ) -> Result<SequenceCheck, StorageError> {
        assert!(!headers.is_empty());
        if headers.len() == 1 {
            return self.check(&headers[0]);
        }
        let mut staged = ProducerStateManager::default();
        for header in headers.iter().filter(|header| is_idempotent(header)) {
            if let Some(entry) = self.producers.get(&header.producer_id) {
                staged
                    .producers
                    .entry(header.producer_id)
                    .or_insert_with(|| entry.clone());
            }
        }
        let mut results = Vec::with_capacity(headers.len());
        for header in headers {
            let result = staged.check(header)?;
            if result == SequenceCheck::Fresh {
                staged.record(header);
            }
            results.push(result);
        }
        mixed_outcome(headers, &results)
    }
}

fn mixed_outcome(
    headers: &[BatchHeader],
    results: &[SequenceCheck],
) -> Result<SequenceCheck, StorageError> {
    let duplicates = results
        .iter()
        .filter(|r| **r != SequenceCheck::Fresh)
        .count();
    if duplicates == 0 {
        return Ok(SequenceCheck::Fresh);
    }
    if duplicates < results.len() {
        let header = headers[results
            .iter()
            .position(|r| *r == SequenceCheck::Fresh)
            .unwrap_or(0)];
        return Err(StorageError::OutOfOrderSequence {
            producer_id: header.producer_id,
            expected: -1,
            got: header.base_sequence,
        });
    }
    let first = results.first().copied();
    let last = results.last().copied();
    match (first, last) {
        (
            Some(SequenceCheck::Duplicate { base_offset, .. }),
            Some(SequenceCheck::Duplicate { last_offset, .. }),
        ) => Ok(SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        }),
        _ => Ok(SequenceCheck::Fresh),
    }
}
