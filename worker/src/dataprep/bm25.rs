//! BM25 similar-case retrieval over the training split ("process memory").
//!
//! Why BM25 and not embeddings: the signal that makes a past case useful is shared identifiers
//! (same supplier, same PO, same material, same G/L account), which are exact tokens; BM25 weighs
//! rare shared identifiers highly and common ones (currency, company code) near zero, needs no
//! model download, is deterministic, and indexes 200K documents in well under a second.
//!
//! Speed: postings are term -> (doc, tf) arrays; a query scores only the postings of its terms,
//! skips terms in more than 1% of the documents (at most 1000: their IDF is low and their postings
//! are the long ones), and keeps the 16 query terms with the highest IDF.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// k1 and b as in Robertson & Zaragoza; the usual defaults.
const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Interns terms to dense ids. Terms are keyed by their 64-bit hash ([`super::tokens::term_hash`]):
/// no term strings are kept (a collision between two of a few million terms is ~1e-7 likely and
/// would only merge two rare terms' postings).
#[derive(Default)]
pub struct Vocab {
    ids: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
}

/// The keys are already FNV hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl Vocab {
    /// The id of a term given as its string.
    pub fn id(&mut self, term: &str) -> u32 {
        self.id_of_hash(super::tokens::term_hash(term))
    }

    /// The id of a term given as its hash.
    pub fn id_of_hash(&mut self, h: u64) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(h).or_insert(next)
    }

    pub fn get(&self, term: &str) -> Option<u32> {
        self.ids.get(&super::tokens::term_hash(term)).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A BM25 index over documents given as term-id lists.
pub struct Bm25 {
    postings: Vec<Vec<(u32, u16)>>,
    doc_len: Vec<f32>,
    avg_len: f32,
    idf: Vec<f32>,
    max_df: usize,
    max_query_terms: usize,
}

/// A hit: index of the document (in insertion order) and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub doc: u32,
    pub score: f32,
}

impl Bm25 {
    /// Builds the index from `docs` (term ids < `vocab_size`).
    pub fn build<'a>(docs: impl Iterator<Item = &'a [u32]>, vocab_size: usize) -> Bm25 {
        let mut postings: Vec<Vec<(u32, u16)>> = vec![Vec::new(); vocab_size];
        let mut doc_len = Vec::new();
        let mut scratch: Vec<u32> = Vec::new();
        for (d, terms) in docs.enumerate() {
            scratch.clear();
            scratch.extend_from_slice(terms);
            scratch.sort_unstable();
            let mut i = 0;
            while i < scratch.len() {
                let t = scratch[i];
                let mut j = i;
                while j < scratch.len() && scratch[j] == t {
                    j += 1;
                }
                postings[t as usize].push((d as u32, (j - i).min(u16::MAX as usize) as u16));
                i = j;
            }
            doc_len.push(terms.len() as f32);
        }
        let n = doc_len.len().max(1) as f32;
        let avg_len = (doc_len.iter().sum::<f32>() / n).max(1.0);
        let idf = postings
            .iter()
            .map(|p| {
                let df = p.len() as f32;
                ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
            })
            .collect();
        // Terms in more than 1% of the documents (at most 1000) carry little identity and their
        // postings dominate query time; the cap keeps a query's cost independent of corpus size.
        let max_df = (doc_len.len() / 100).clamp(50, 1000);
        Bm25 { postings, doc_len, avg_len, idf, max_df, max_query_terms: 16 }
    }

    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// The `k` best documents for `query` that `keep` accepts, best first (ties: lower doc id).
    /// `scores` is caller-owned scratch of length `len()` (all zero on entry and on return).
    pub fn search(
        &self,
        query: &[u32],
        k: usize,
        scores: &mut [f32],
        keep: impl Fn(u32) -> bool,
    ) -> Vec<Hit> {
        let mut terms: Vec<u32> = query
            .iter()
            .copied()
            .filter(|t| (*t as usize) < self.postings.len())
            .filter(|t| {
                let df = self.postings[*t as usize].len();
                df > 0 && df <= self.max_df
            })
            .collect();
        terms.sort_unstable();
        terms.dedup();
        terms.sort_by(|a, b| self.idf[*b as usize].total_cmp(&self.idf[*a as usize]).then(a.cmp(b)));
        terms.truncate(self.max_query_terms);
        let mut touched: Vec<u32> = Vec::new();
        for t in &terms {
            let idf = self.idf[*t as usize];
            for &(d, tf) in &self.postings[*t as usize] {
                let tf = tf as f32;
                let norm = K1 * (1.0 - B + B * self.doc_len[d as usize] / self.avg_len);
                let s = &mut scores[d as usize];
                if *s == 0.0 {
                    touched.push(d);
                }
                *s += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut hits: Vec<Hit> = touched
            .iter()
            .filter(|d| keep(**d))
            .map(|&d| Hit { doc: d, score: scores[d as usize] })
            .collect();
        for d in touched {
            scores[d as usize] = 0.0;
        }
        let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc));
        if hits.len() > k {
            hits.select_nth_unstable_by(k, by_score);
            hits.truncate(k);
        }
        hits.sort_by(by_score);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_shared_terms_rank_first_and_filter_applies() {
        let mut v = Vocab::default();
        let docs: Vec<Vec<u32>> = [
            vec!["sup:1", "cur:EUR", "mat:A"],
            vec!["sup:2", "cur:EUR", "mat:B"],
            vec!["sup:1", "cur:EUR", "mat:C"],
            vec!["sup:3", "cur:EUR", "mat:A"],
        ]
        .iter()
        .map(|d| d.iter().map(|t| v.id(t)).collect())
        .collect();
        let idx = Bm25::build(docs.iter().map(Vec::as_slice), v.len());
        let mut scratch = vec![0.0; idx.len()];
        let q: Vec<u32> = ["sup:1", "mat:A"].iter().map(|t| v.get(t).unwrap()).collect();
        let hits = idx.search(&q, 2, &mut scratch, |_| true);
        assert_eq!(hits[0].doc, 0, "shares both rare terms");
        assert_eq!(hits.len(), 2);
        assert!(scratch.iter().all(|s| *s == 0.0), "scratch is reset");
        let hits = idx.search(&q, 3, &mut scratch, |d| d != 0);
        assert!(hits.iter().all(|h| h.doc != 0));
    }
}
