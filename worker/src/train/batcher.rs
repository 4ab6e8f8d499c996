//! Padding-aware, seeded batching.
//!
//! Each epoch shuffles the examples with a seed derived from (seed, epoch), cuts the order into
//! windows of 64 batches, sorts each window by length and cuts it into batches, then shuffles
//! the batches. Batches hold examples of similar length (little padding) while the epoch order
//! stays random. The order is a pure function of (seed, epoch), so a resumed run only needs the
//! epoch and the batch index to continue exactly where it stopped.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Batches (indices into the example list) of one epoch.
pub fn epoch_batches(lengths: &[usize], batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let window = batch_size * 64;
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in order.chunks_mut(window) {
        // Stable sort on a shuffled chunk: ties keep their random order.
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// A padded batch ready for the model.
pub struct Batch {
    /// `[B, T]` token ids (u32), right-padded.
    pub input_ids: Tensor,
    /// `[B, T]` 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B, T]` the loss weight of each target token (f32): 0 on the prompt and padding, 1 on
    /// response tokens, more on tokens the data marks as weighing more (the decision's choice).
    pub loss_mask: Tensor,
    /// Response tokens counted by the loss.
    pub loss_tokens: usize,
    /// Sum of the loss weights (the loss is the weighted mean over it).
    pub loss_weight: f64,
    /// Non-padding tokens.
    pub tokens: usize,
}

/// Right-pads `seqs` (ids and loss weights, see [`Batch::loss_mask`]) to the longest one.
pub fn collate(seqs: &[(&[u32], &[u8])], pad_id: u32, device: &Device) -> Result<Batch> {
    let b = seqs.len();
    let t = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * t];
    let mut attn = vec![0u32; b * t];
    let mut loss = vec![0f32; b * t];
    let (mut loss_tokens, mut tokens, mut loss_weight) = (0, 0, 0.0);
    for (row, (s, m)) in seqs.iter().enumerate() {
        for (j, (&id, &weight)) in s.iter().zip(m.iter()).enumerate() {
            ids[row * t + j] = id;
            attn[row * t + j] = 1;
            // The first token is never predicted (no previous position), so it cannot count.
            if weight > 0 && j > 0 {
                loss[row * t + j] = f32::from(weight);
                loss_tokens += 1;
                loss_weight += f64::from(weight);
            }
        }
        tokens += s.len();
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(attn, (b, t), device)?,
        loss_mask: Tensor::from_vec(loss, (b, t), device)?,
        loss_tokens,
        tokens,
        loss_weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_example_once_and_are_deterministic() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 300 + 10).collect();
        let a = epoch_batches(&lengths, 4, 7, 0);
        let b = epoch_batches(&lengths, 4, 7, 0);
        assert_eq!(a, b, "same seed and epoch, same order");
        assert_ne!(a, epoch_batches(&lengths, 4, 7, 1), "each epoch reshuffles");
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn length_grouping_cuts_padding() {
        let lengths: Vec<usize> = (0..2048).map(|i| (i * 7919) % 500 + 10).collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches.iter().map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len()).sum()
        };
        let grouped = padded(&epoch_batches(&lengths, 8, 1, 0));
        let naive: Vec<Vec<usize>> = (0..2048).collect::<Vec<_>>().chunks(8).map(<[usize]>::to_vec).collect();
        let real: usize = lengths.iter().sum();
        assert!(grouped < padded(&naive), "grouping must pad less than arrival order");
        assert!((grouped as f64) < real as f64 * 1.1, "padding overhead {grouped} vs {real}");
    }

    #[test]
    fn collate_pads_right_and_masks_the_prompt_and_first_token() {
        let a: (&[u32], &[u8]) = (&[1, 5, 6, 2], &[0, 0, 1, 1]);
        let b: (&[u32], &[u8]) = (&[1, 7], &[1, 1]);
        let batch = collate(&[a, b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), vec![vec![1, 5, 6, 2], vec![1, 7, 0, 0]]);
        assert_eq!(batch.attention_mask.to_vec2::<u32>().unwrap(), vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0]]);
        assert_eq!(
            batch.loss_mask.to_vec2::<f32>().unwrap(),
            vec![vec![0., 0., 1., 1.], vec![0., 1., 0., 0.]]
        );
        assert_eq!((batch.loss_tokens, batch.tokens), (3, 6));
        assert_eq!(batch.loss_weight, 3.0);
    }

    #[test]
    fn collate_keeps_loss_weights() {
        let a: (&[u32], &[u8]) = (&[1, 5, 6, 2], &[0, 4, 4, 1]);
        let batch = collate(&[a], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.loss_mask.to_vec2::<f32>().unwrap(), vec![vec![0., 4., 4., 1.]]);
        assert_eq!((batch.loss_tokens, batch.loss_weight), (3, 9.0));
    }
}
