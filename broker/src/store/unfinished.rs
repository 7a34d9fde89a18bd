//! How a starting broker finds the unfinished runs without an index that every run's
//! creation and end writes to.
//!
//! An index of the unfinished runs costs every run two writes of its own: an entry when
//! it is created and its removal when it ends (in PostgreSQL, a partial index `WHERE NOT
//! finished` also keeps each run's end from being an update in place; in the embedded
//! store, an insert and a tombstone that the engine writes out and compacts). Instead,
//! two reads find them together:
//! - the newest runs, by sequence number from `scan_from` on (a range of the runs, a few
//!   thousand at most);
//! - older runs still unfinished, each marked (a column a small partial index covers in
//!   PostgreSQL; an entry of the `active` tree in the embedded store) in the same commit
//!   that moves `scan_from` past it.
//!
//! A run that ends before `scan_from` passes it (nearly all) is never marked, so none of
//! its writes touches the index. The invariant, true at every commit: every unfinished
//! run below `scan_from` is marked.

use std::collections::BTreeMap;

/// How many of the newest runs the range read covers at most (besides a batch's).
pub const NEWEST: u64 = 4_096;

/// The unfinished runs the store knows (all of them: loaded at open, kept up to date
/// by every write), with whether each is marked.
#[derive(Debug, Default)]
pub struct Unfinished {
    /// Marked, by sequence number.
    runs: BTreeMap<u64, bool>,
    scan_from: u64,
}

impl Unfinished {
    /// As stored: `scan_from`, and the unfinished runs the two reads found.
    pub fn new(scan_from: u64, runs: impl IntoIterator<Item = (u64, bool)>) -> Unfinished {
        Unfinished {
            runs: runs.into_iter().collect(),
            scan_from,
        }
    }

    pub fn scan_from(&self) -> u64 {
        self.scan_from
    }

    /// A run written, ended or not: whether its row is to be marked.
    pub fn written(&mut self, seq: u64, finished: bool) -> bool {
        if finished {
            self.runs.remove(&seq);
            return false;
        }
        let marked = self.runs.entry(seq).or_insert(false);
        // A run rewritten after `scan_from` passed it stays marked; one written below it
        // for the first time (an old store copied in) is marked at once.
        *marked |= seq < self.scan_from;
        *marked
    }

    /// A run deleted.
    pub fn deleted(&mut self, seq: u64) {
        self.runs.remove(&seq);
    }

    /// Moves `scan_from` to keep [`NEWEST`] runs above it, given the highest sequence
    /// number written: the new `scan_from` (if it moved) and the runs to mark with it,
    /// in the same commit.
    pub fn advance(&mut self, last_seq: u64) -> Option<(u64, Vec<u64>)> {
        let to = (last_seq + 1).saturating_sub(NEWEST);
        if to <= self.scan_from {
            return None;
        }
        let mut marks = Vec::new();
        for (seq, marked) in self.runs.range_mut(..to) {
            if !*marked {
                *marked = true;
                marks.push(*seq);
            }
        }
        self.scan_from = to;
        Some((to, marks))
    }

    /// Every unfinished run, oldest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.keys().copied()
    }

    /// Whether `seq` is an unfinished run that is marked.
    pub fn is_marked(&self, seq: u64) -> bool {
        self.runs.get(&seq) == Some(&true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_that_end_among_the_newest_are_never_marked_and_older_ones_are_as_they_are_passed() {
        let mut unfinished = Unfinished::new(1, []);
        for seq in 1..=NEWEST + 10 {
            assert!(!unfinished.written(seq, false));
        }
        // Run 3 ends while still among the newest; 5 and 7 do not.
        assert!(!unfinished.written(3, true));
        let (scan_from, marks) = unfinished.advance(NEWEST + 10).unwrap();
        assert_eq!(scan_from, 11);
        assert_eq!(marks, [1, 2, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(unfinished.advance(NEWEST + 10), None, "nothing moves twice");
        // A marked run rewritten, still unfinished, stays marked; ended, it is not.
        assert!(unfinished.written(5, false));
        assert!(!unfinished.written(7, true));
        assert!(
            !unfinished.seqs().any(|seq| seq == 7),
            "no longer unfinished"
        );
        unfinished.deleted(8);
        let (_, marks) = unfinished.advance(NEWEST + 20).unwrap();
        assert_eq!(marks, (11..=20).collect::<Vec<_>>());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Create,
        /// A run with an older sequence number written for the first time (a store
        /// copied in).
        CopyIn(u64),
        Rewrite(usize),
        End(usize),
        Delete(usize),
        Commit,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Create),
            1 => any::<u64>().prop_map(Step::CopyIn),
            1 => any::<usize>().prop_map(Step::Rewrite),
            2 => any::<usize>().prop_map(Step::End),
            1 => any::<usize>().prop_map(Step::Delete),
            1 => Just(Step::Commit),
        ]
    }

    proptest! {
        /// Whatever the writes, after each commit every unfinished run below
        /// `scan_from` is marked in the rows as written (the model of the table), and
        /// the two reads of a starting broker find exactly the unfinished runs.
        #[test]
        fn every_unfinished_run_is_found_by_the_two_reads(steps in proptest::collection::vec(step(), 1..1_500)) {
            let mut unfinished = Unfinished::new(1, []);
            // The table: seq → (finished, marked).
            let mut rows: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
            let mut last_seq = 0u64;
            // Big steps of sequence numbers, so that `scan_from` moves within a case.
            let gap = NEWEST / 64;
            for step in steps {
                let existing: Vec<u64> = rows.keys().copied().collect();
                let pick = |n: usize| existing.get(n % existing.len().max(1)).copied();
                match step {
                    Step::Create => {
                        last_seq += gap;
                        let marked = unfinished.written(last_seq, false);
                        rows.insert(last_seq, (false, marked));
                    }
                    Step::CopyIn(n) => {
                        let seq = 1 + n % last_seq.max(1);
                        if let std::collections::btree_map::Entry::Vacant(row) = rows.entry(seq) {
                            row.insert((false, unfinished.written(seq, false)));
                        }
                    }
                    Step::Rewrite(n) | Step::End(n) => {
                        if let Some(seq) = pick(n) {
                            let finished = matches!(step, Step::End(_)) || rows[&seq].0;
                            let marked = unfinished.written(seq, finished);
                            rows.insert(seq, (finished, marked));
                        }
                    }
                    Step::Delete(n) => {
                        if let Some(seq) = pick(n) {
                            unfinished.deleted(seq);
                            rows.remove(&seq);
                        }
                    }
                    Step::Commit => {
                        if let Some((_, marks)) = unfinished.advance(last_seq) {
                            for seq in marks {
                                rows.get_mut(&seq).expect("a marked run is in the table").1 = true;
                            }
                        }
                        let scan_from = unfinished.scan_from();
                        let found: Vec<u64> = rows
                            .iter()
                            .filter(|(seq, (finished, marked))| !finished && (*marked || **seq >= scan_from))
                            .map(|(seq, _)| *seq)
                            .collect();
                        let expected: Vec<u64> = rows
                            .iter()
                            .filter(|(_, (finished, _))| !finished)
                            .map(|(seq, _)| *seq)
                            .collect();
                        prop_assert_eq!(found, expected);
                        // And the range read stays short.
                        prop_assert!(last_seq + 1 - scan_from.min(last_seq + 1) <= NEWEST);
                    }
                }
            }
        }
    }
}
