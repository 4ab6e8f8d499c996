//! Gradient checkpointing per decoder layer (candle has none built in).
//!
//! Forward: run the layers keeping only each layer's input, detached, so no layer's
//! activations stay alive. The head (final norm, lm_head, the caller's loss) runs with a graph
//! rooted at a `Var` holding the last layer's output; its backward gives d loss / d hidden.
//! Backward, last layer first: wrap the stored input in a `Var`, recompute the layer, and
//! back-propagate `sum(out * grad_out)` — whose gradient w.r.t. the layer's parameters and input
//! is exactly the chain rule with `grad_out` — then carry the input's gradient to the layer below.
//! LoRA dropout masks are replayed by resetting the dropout counter before each recompute.

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{Mixtral, ModelOutput, mask_rows};
use crate::path::ForwardPath;

/// Adds `src`'s gradients for `ids` into `acc`.
fn accumulate(acc: &mut GradStore, src: &GradStore, vars: &[Var]) -> Result<()> {
    for v in vars {
        if let Some(g) = src.get(v) {
            let sum = match acc.get(v) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(v, sum);
        }
    }
    Ok(())
}

/// See the module docs. Same contract as [`Mixtral::forward_backward_on`].
pub fn forward_backward(
    model: &Mixtral,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    path: ForwardPath,
    loss_fn: &mut dyn FnMut(&ModelOutput) -> Result<Tensor>,
) -> Result<(Tensor, GradStore)> {
    let (b, t) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
    let mask = mask_rows(attention_mask, b, t)?;
    let inp = model.attn_inputs(b, t, t, mask.as_deref(), path)?;
    let vars: Vec<Var> = model.trainable_vars().into_iter().map(|(_, v)| v).collect();

    let emb = model.embed(input_ids)?;
    let mut inputs = Vec::with_capacity(model.layers.len());
    let mut counters = Vec::with_capacity(model.layers.len());
    let mut x = emb.detach();
    for layer in &model.layers {
        inputs.push(x.clone());
        counters.push(model.control.dropout_counter());
        x = layer.forward(&x, &inp, None)?.0.detach();
    }
    let counter_end = model.control.dropout_counter();

    // Head + loss with a graph rooted at the last hidden state.
    let last = Var::from_tensor(&x)?;
    let (hidden, logits) = model.head(last.as_tensor(), path)?;
    let out = ModelOutput { logits, hidden, router_logits: Vec::new() };
    let loss = loss_fn(&out)?;
    drop(out);
    let mut grads = loss.backward()?;
    let mut grad_out =
        grads.remove(last.as_tensor()).context("the loss does not depend on the model output")?;

    for (l, layer) in model.layers.iter().enumerate().rev() {
        let xin = Var::from_tensor(&inputs[l])?;
        model.control.set_dropout_counter(counters[l]);
        let (y, _) = layer.forward(xin.as_tensor(), &inp, None)?;
        let layer_grads = (y * grad_out.detach())?.sum_all()?.backward()?;
        accumulate(&mut grads, &layer_grads, &vars)?;
        grad_out = match layer_grads.get(xin.as_tensor()) {
            Some(g) => g.clone(),
            None => grad_out.zeros_like()?,
        };
        inputs.pop();
    }
    model.control.set_dropout_counter(counter_end);

    // Embeddings, when trained.
    if let Some(ev) = model.embed_tokens.var() {
        let e = model.embed(input_ids)?;
        let g = (e * grad_out.detach())?.sum_all()?.backward()?;
        accumulate(&mut grads, &g, std::slice::from_ref(ev))?;
    }
    Ok((loss.detach(), grads))
}
