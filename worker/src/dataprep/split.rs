//! Train/val/test assignment with near-duplicate grouping.
//!
//! Records are grouped by union-find over two keys: the document id and the business
//! fingerprint ([`super::tokens::fingerprint`]). A resubmitted invoice (new id, same supplier and
//! invoice number, different noise) joins its original's group, and a document id logged twice
//! stays in one group. A group's split follows from a hash of its smallest key, so it is
//! deterministic and independent of record order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::config::SplitFractions;
use super::tokens::fnv;

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Union-find over 64-bit keys.
#[derive(Default)]
pub struct Groups {
    parent: HashMap<u64, u64>,
}

impl Groups {
    fn find(&mut self, x: u64) -> u64 {
        let mut root = x;
        while let Some(&p) = self.parent.get(&root) {
            if p == root {
                break;
            }
            root = p;
        }
        // Path compression keeps later finds O(1)-ish.
        let mut cur = x;
        while cur != root {
            let next = self.parent[&cur];
            self.parent.insert(cur, root);
            cur = next;
        }
        root
    }

    /// Adds `a` (and `b`) and joins them.
    pub fn union(&mut self, a: u64, b: Option<u64>) {
        self.parent.entry(a).or_insert(a);
        if let Some(b) = b {
            self.parent.entry(b).or_insert(b);
            let (ra, rb) = (self.find(a), self.find(b));
            if ra != rb {
                // Keep the smaller key as root: the group's representative is then its minimum.
                let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                self.parent.insert(hi, lo);
            }
        }
    }

    /// The group representative (its smallest key) of `a`.
    pub fn group_of(&mut self, a: u64) -> u64 {
        self.find(a)
    }
}

/// The split of a group.
pub fn assign(group: u64, seed: u64, f: SplitFractions) -> Split {
    let h = fnv(&(group ^ seed.rotate_left(17)).to_le_bytes());
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < f.train {
        Split::Train
    } else if u < f.train + f.val {
        Split::Val
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_join_transitively_with_min_representative() {
        let mut g = Groups::default();
        g.union(10, Some(5));
        g.union(7, Some(10));
        g.union(3, None);
        assert_eq!(g.group_of(7), 5);
        assert_eq!(g.group_of(10), 5);
        assert_eq!(g.group_of(3), 3);
    }

    #[test]
    fn assignment_follows_fractions() {
        let f = SplitFractions { train: 0.8, val: 0.1, test: 0.1 };
        let mut n = [0usize; 3];
        for g in 0..20_000u64 {
            n[assign(g, 42, f) as usize] += 1;
        }
        assert!((15_500..16_500).contains(&n[0]), "{n:?}");
        assert!((1_700..2_300).contains(&n[1]), "{n:?}");
    }
}
