//! Dissemination queue: one pending update per subject, least transmitted
//! first, dropped after the retransmit limit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::wire::{NodeId, Update, encoded_len};

struct Entry {
    update: Update,
    len: usize,
    transmits: u32,
    seq: u64,
}

#[derive(Default)]
pub(crate) struct Broadcasts {
    by_subject: BTreeMap<NodeId, Entry>,
    /// (transmits, newest first, subject)
    order: BTreeSet<(u32, Reverse<u64>, NodeId)>,
    next_seq: u64,
}

/// Smallest possible encoded update; used to stop scanning early.
const MIN_UPDATE_LEN: usize = 12;

impl Broadcasts {
    /// Queues `update`, replacing any pending update about the same subject.
    pub fn push(&mut self, update: Update) {
        let subject = update.subject();
        self.remove(subject);
        let len = encoded_len(&update);
        self.next_seq += 1;
        let seq = self.next_seq;
        self.order.insert((0, Reverse(seq), subject));
        self.by_subject.insert(
            subject,
            Entry {
                update,
                len,
                transmits: 0,
                seq,
            },
        );
    }

    fn remove(&mut self, subject: NodeId) {
        if let Some(e) = self.by_subject.remove(&subject) {
            self.order.remove(&(e.transmits, Reverse(e.seq), subject));
        }
    }

    pub fn len(&self) -> usize {
        self.by_subject.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }

    /// True if an untransmitted-yet update about `subject` is pending.
    pub fn has_fresh(&self, subject: NodeId) -> bool {
        self.by_subject
            .get(&subject)
            .is_some_and(|e| e.transmits == 0)
    }

    /// Picks updates, least transmitted first, whose encoded size fits in
    /// `budget` bytes; counts a transmission for each and drops those that
    /// reached `limit`. `skip` excludes a subject (e.g. already included).
    pub fn take(&mut self, mut budget: usize, limit: u32, skip: Option<NodeId>) -> Vec<Update> {
        let mut picked = Vec::new();
        let mut misses = 0;
        for &(_, _, subject) in &self.order {
            if budget < MIN_UPDATE_LEN || misses > 8 {
                break;
            }
            if Some(subject) == skip {
                continue;
            }
            let e = &self.by_subject[&subject];
            if e.len <= budget {
                budget -= e.len;
                picked.push(subject);
            } else {
                misses += 1;
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        for subject in picked {
            let Some(mut e) = self.by_subject.remove(&subject) else {
                continue;
            };
            self.order.remove(&(e.transmits, Reverse(e.seq), subject));
            e.transmits += 1;
            out.push(e.update.clone());
            if e.transmits < limit {
                self.order.insert((e.transmits, Reverse(e.seq), subject));
                self.by_subject.insert(subject, e);
            }
        }
        out
    }
}
