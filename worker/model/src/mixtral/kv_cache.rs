//! The key/value cache for generation. It lives outside the training path: training always
//! runs [`Mixtral::forward`] over whole sequences, and nothing here is differentiated.

use anyhow::{Context, Result, ensure};
use candle_core::Tensor;

/// Keys and values of one layer, `[B, n_kv_heads, S, head_dim]` (after rotary embedding).
///
/// Stored in buffers with spare room along S that new positions are written into in place, so
/// a decode step costs the new token's keys, not a copy of the whole cache (`Tensor::cat` per
/// step copied every cached position, every layer, every token). Because writes are in place,
/// two caches must never share buffers: [`LayerCache::fork`] copies, and there is no `Clone`.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// Spare positions allocated beyond what is needed when a buffer grows.
const MIN_HEADROOM: usize = 256;

impl LayerCache {
    /// Appends new keys/values `[B, n_kv, t, hd]` and returns the full ones (views of the
    /// buffers on CPU, contiguous copies elsewhere).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let need = self.len + t;
        let cap = self.k.as_ref().map_or(Ok(0), |b| b.dim(2))?;
        if need > cap {
            let new_cap = need.max(2 * cap).max(need + MIN_HEADROOM);
            self.k = Some(grow(self.k.as_ref(), k, self.len, new_cap)?);
            self.v = Some(grow(self.v.as_ref(), v, self.len, new_cap)?);
        }
        let (kb, vb) = (self.k.as_ref().context("cache")?, self.v.as_ref().context("cache")?);
        kb.slice_set(&k.detach().contiguous()?, 2, self.len)?;
        vb.slice_set(&v.detach().contiguous()?, 2, self.len)?;
        self.len = need;
        let (k, v) = (kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?);
        // candle's CPU matmul reads these strided views directly; other backends want them
        // contiguous.
        if k.device().is_cpu() { Ok((k, v)) } else { Ok((k.contiguous()?, v.contiguous()?)) }
    }

    /// Calls `f(keys, values, capacity)` with the f32 buffers of a ONE-sequence cache on the CPU,
    /// each laid out `[n_kv_heads, capacity, head_dim]` (positions `0..len` are filled): the
    /// plain-slice decode step reads attention from them.
    pub fn with_cpu_slices<R>(&self, f: impl FnOnce(&[f32], &[f32], usize) -> R) -> Result<R> {
        let (kb, vb) = (self.k.as_ref().context("empty cache")?, self.v.as_ref().context("empty cache")?);
        let (b, _, cap, _) = kb.dims4()?;
        ensure!(b == 1, "slices of a cache of {b} sequences");
        let (ks, kl) = kb.storage_and_layout();
        let (vs, vl) = vb.storage_and_layout();
        let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&*ks, &*vs) else {
            anyhow::bail!("the cache is not on the CPU")
        };
        let (Some((k0, k1)), Some((v0, v1))) = (kl.contiguous_offsets(), vl.contiguous_offsets()) else {
            anyhow::bail!("cache buffers are not contiguous")
        };
        Ok(f(&ks.as_slice::<f32>()?[k0..k1], &vs.as_slice::<f32>()?[v0..v1], cap))
    }

    /// Keeps the first `len` positions (later writes reuse the rest).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// An independent copy (its own buffers, with headroom).
    pub fn fork(&self) -> Result<Self> {
        let copy = |b: &Option<Tensor>| {
            b.as_ref().map(|b| grow(Some(b), b, self.len, self.len + MIN_HEADROOM)).transpose()
        };
        Ok(LayerCache { k: copy(&self.k)?, v: copy(&self.v)?, len: self.len })
    }
}

/// A new zeroed buffer of `cap` positions shaped like `like`, holding the first `len`
/// positions of `old`.
fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, cap: usize) -> Result<Tensor> {
    let (b, h, _, d) = like.dims4().context("cache entries are [batch, kv_heads, seq, head_dim]")?;
    let buf = Tensor::zeros((b, h, cap, d), like.dtype(), like.device())?;
    if let Some(old) = old.filter(|_| len > 0) {
        buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
    }
    Ok(buf)
}

/// The cache of a whole model for one batch of sequences, with the key padding mask.
#[derive(Debug)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Per sequence, 1 for a real token and 0 for padding, over every cached position.
    pub mask: Vec<Vec<u8>>,
}

impl KvCache {
    /// An empty cache for `batch` sequences through `n_layers` decoder layers
    /// (`MixtralConfig::num_hidden_layers`).
    pub fn new(n_layers: usize, batch: usize) -> Self {
        KvCache {
            layers: (0..n_layers).map(|_| LayerCache::default()).collect(),
            mask: vec![Vec::new(); batch],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops trailing positions that are padding in every row (rejected draft tokens, step
    /// padding): they are invisible to attention anyway, and keeping them costs every later
    /// step a longer attention and copy.
    pub fn trim_padding_tail(&mut self) -> Result<()> {
        let keep = self.mask.iter().map(|m| m.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1)).max();
        let Some(keep) = keep else { return Ok(()) };
        if keep >= self.len() {
            return Ok(());
        }
        for row in &mut self.mask {
            row.truncate(keep);
        }
        for layer in &mut self.layers {
            layer.truncate(keep);
        }
        Ok(())
    }

    /// An independent copy to continue differently (option branches from one prompt).
    pub fn fork(&self) -> Result<Self> {
        Ok(KvCache {
            layers: self.layers.iter().map(LayerCache::fork).collect::<Result<_>>()?,
            mask: self.mask.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn kv(start: f32, t: usize) -> Tensor {
        let v: Vec<f32> = (0..2 * t * 3).map(|i| start + i as f32).collect();
        Tensor::from_vec(v, (1, 2, t, 3), &Device::Cpu).unwrap()
    }

    fn as_vec(t: &Tensor) -> Vec<f32> {
        t.contiguous().unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn appends_past_the_capacity_keep_every_position() {
        let mut c = LayerCache::default();
        let mut want = Vec::new();
        for step in 0..(MIN_HEADROOM + 40) {
            let k = kv(step as f32 * 100.0, 1);
            want.push(k.clone());
            let (all_k, all_v) = c.append(&k, &k).unwrap();
            assert_eq!(all_k.dims(), &[1, 2, step + 1, 3]);
            assert_eq!(as_vec(&all_v), as_vec(&all_k));
        }
        let (all_k, _) = c.append(&kv(-1.0, 2), &kv(-1.0, 2)).unwrap();
        want.push(kv(-1.0, 2));
        let expected = Tensor::cat(&want.iter().collect::<Vec<_>>(), 2).unwrap();
        assert_eq!(as_vec(&all_k), as_vec(&expected), "growth copies the old positions");
    }

    #[test]
    fn a_fork_is_independent_of_its_source() {
        // Writes are in place: without a real copy, a branch would overwrite its sibling.
        let mut a = LayerCache::default();
        a.append(&kv(0.0, 4), &kv(0.0, 4)).unwrap();
        let mut b = a.fork().unwrap();
        let (b_k, _) = b.append(&kv(1000.0, 2), &kv(1000.0, 2)).unwrap();
        let (a_k, _) = a.append(&kv(-1000.0, 2), &kv(-1000.0, 2)).unwrap();
        let b_again = b.k.as_ref().unwrap().narrow(2, 0, b.len).unwrap();
        assert_eq!(as_vec(&b_again), as_vec(&b_k), "the fork kept its own tokens");
        assert_ne!(as_vec(&a_k), as_vec(&b_k));
        assert_eq!(as_vec(&a_k.narrow(2, 0, 4).unwrap()), as_vec(&kv(0.0, 4)), "shared prefix intact");
    }

    #[test]
    fn truncation_drops_positions_and_later_writes_reuse_them() {
        let mut c = LayerCache::default();
        c.append(&kv(0.0, 5), &kv(0.0, 5)).unwrap();
        c.truncate(3);
        let (k, _) = c.append(&kv(7.0, 1), &kv(7.0, 1)).unwrap();
        assert_eq!(k.dims(), &[1, 2, 4, 3]);
        let tail = as_vec(&k.narrow(2, 3, 1).unwrap());
        assert_eq!(tail, as_vec(&kv(7.0, 1)));
    }

    #[test]
    fn trailing_padding_of_every_row_is_trimmed() {
        let mut layer = LayerCache::default();
        layer.append(&kv(0.0, 5), &kv(0.0, 5)).unwrap();
        let mut c = KvCache { layers: vec![layer], mask: vec![vec![1, 1, 1, 0, 0]] };
        c.trim_padding_tail().unwrap();
        assert_eq!((c.len(), c.layers[0].len), (3, 3));
        c.mask[0][2] = 0;
        c.trim_padding_tail().unwrap();
        assert_eq!(c.len(), 2);
    }
}
