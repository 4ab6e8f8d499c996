//! The key/value cache for generation. It lives outside the training path: training always
//! runs [`Mixtral::forward`] over whole sequences, and nothing here is differentiated.

use anyhow::{Context, Result, ensure};
use candle_core::Tensor;

use super::mixtral::Mixtral;

/// Keys and values of one layer, `[B, n_kv_heads, S, head_dim]` (after rotary embedding).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerCache {
    /// Appends new keys/values and returns the full ones.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => {
                (Tensor::cat(&[pk, &k.detach()], 2)?, Tensor::cat(&[pv, &v.detach()], 2)?)
            }
            _ => (k.detach(), v.detach()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// The cache of a whole model for one batch of sequences, with the key padding mask.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Per sequence, 1 for a real token and 0 for padding, over every cached position.
    pub mask: Vec<Vec<u8>>,
}

impl KvCache {
    pub fn new(model: &Mixtral, batch: usize) -> Self {
        KvCache { layers: vec![LayerCache::default(); model.layers.len()], mask: vec![Vec::new(); batch] }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Mixtral {
    /// Runs `input_ids` `[B, q]` after the cached positions, appends their keys/values, and
    /// returns the logits `[B, q, V]`. `mask` gives 1/0 (real/padding) for the new positions.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        mask: &[Vec<u8>],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, q) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        ensure!(cache.mask.len() == b, "cache is for batch {}, input has {b}", cache.mask.len());
        ensure!(mask.len() == b, "mask has {} rows for batch {b}", mask.len());
        for (row, m) in cache.mask.iter_mut().zip(mask) {
            ensure!(m.len() == q, "mask row has {} entries for {q} tokens", m.len());
            row.extend_from_slice(m);
        }
        let k_len = cache.len();
        let inp = self.attn_inputs(b, q, k_len, Some(&cache.mask))?;
        let mut x = self.embed(input_ids)?;
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &inp, Some(lc))?.0;
        }
        let (_, logits) = self.head(&x)?;
        Ok(logits.detach())
    }
}
