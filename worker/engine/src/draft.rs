//! Prompt-lookup drafting (Saxena, "Prompt Lookup Decoding", 2023): guess the next tokens by
//! finding the latest earlier occurrence of the text just written and proposing what followed
//! it there. A routing answer copies much of its request (document numbers, units, plants,
//! endpoint names, the document type in the reasoning), so the guesses are often right.
//!
//! The guesses are only proposals: the decoder feeds them with the real tokens in ONE forward
//! and keeps the prefix the model itself would have chosen (see `decoder.rs`), so the answer is
//! the same as without drafting while the forward calls drop.

/// Longest suffix tried as the lookup key (then shorter ones).
pub const MAX_NGRAM: usize = 3;
/// Shortest suffix tried: single tokens (`"`, `,`) recur everywhere and guess badly; a wrong
/// guess still costs its forward compute.
pub const MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the latest earlier occurrence of the longest suffix
/// n-gram (`MAX_NGRAM` down to `MIN_NGRAM`) of `context`; empty when no such suffix occurs
/// earlier.
pub fn propose(context: &[u32], max: usize) -> Vec<u32> {
    let len = context.len();
    if max == 0 || len <= MIN_NGRAM {
        return Vec::new();
    }
    for n in (MIN_NGRAM..=MAX_NGRAM.min(len - 1)).rev() {
        let key = &context[len - n..];
        // Starts `s` with `s + n < len`: the occurrence is followed by at least one token.
        if let Some(s) = (0..len - n).rev().find(|&s| &context[s..s + n] == key) {
            let from = s + n;
            return context[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::propose;

    #[test]
    fn proposes_what_followed_the_latest_longest_match() {
        // ... 7 8 9 1 2 ... 5 8 9 3 4 ... 8 9 -> the latest "8 9" was followed by 3 4.
        let ctx = [7, 8, 9, 1, 2, 5, 8, 9, 3, 4, 6, 8, 9];
        assert_eq!(propose(&ctx, 2), vec![3, 4]);
        assert_eq!(propose(&ctx, 10), vec![3, 4, 6, 8, 9], "stops at the end of the context");
        // A longer key wins over a more recent shorter one: "1 2 3" occurs once, early.
        let ctx = [1, 2, 3, 40, 41, 9, 3, 50, 1, 2, 3];
        assert_eq!(propose(&ctx, 2), vec![40, 41]);
    }

    #[test]
    fn nothing_to_propose() {
        assert!(propose(&[1, 2, 3], 4).is_empty(), "no suffix occurs earlier");
        assert!(propose(&[1, 2, 9, 2], 4).is_empty(), "a single-token match is not enough");
        assert!(propose(&[5, 5, 5], 0).is_empty());
        assert!(propose(&[5, 5], 3).is_empty());
        assert_eq!(propose(&[5, 5, 5], 3), vec![5]);
    }
}
