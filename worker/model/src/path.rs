//! Which implementation of the forward pass runs: one value, chosen by the caller (the engine's
//! decoding options, a benchmark row, a test) and passed down, instead of a global switch.
//!
//! All paths compute the same function up to float summation order (tested side by side in
//! `mixtral::fused` and `plain`); they differ in what they cost and where they apply.

use candle_core::{DType, Tensor};

/// The forward pass implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// The differentiable candle graph only (`mixtral`): any device, any dtype, the reference.
    Candle,
    /// The candle graph with its in-graph CPU shortcuts (`mixtral::fused`: RMSNorm, softmax,
    /// one-position rope and MoE routing in one op each) wherever no input tracks a gradient,
    /// so training through this path is the differentiable graph.
    Fused,
    /// [`ForwardPath::Fused`], with single-row generation steps through the plain-slice forward
    /// (`plain`); prompts are prefilled through the graph.
    PlainSteps,
    /// Single-row prefill and generation steps through the plain-slice forward; everything
    /// else (batches, padded rows, option scoring) through [`ForwardPath::Fused`].
    Plain,
}

impl ForwardPath {
    /// This path where it applies on `device`: the plain-slice forward and the fused kernels are
    /// CPU code, so on any other device the graph runs as [`ForwardPath::Candle`].
    pub fn for_device(self, device: &candle_core::Device) -> Self {
        if device.is_cpu() { self } else { ForwardPath::Candle }
    }

    /// Whether the candle graph takes its in-graph shortcuts.
    pub fn fused(self) -> bool {
        self != ForwardPath::Candle
    }

    /// Whether single-row generation steps go through the plain-slice forward.
    pub fn plain_steps(self) -> bool {
        matches!(self, ForwardPath::PlainSteps | ForwardPath::Plain)
    }

    /// Whether a single-row prompt prefill goes through the plain-slice forward.
    pub fn plain_prefill(self) -> bool {
        self == ForwardPath::Plain
    }

    /// Whether a graph block over these inputs takes its fused shortcut: the path allows it, and
    /// every input is an f32 CPU tensor tracking no gradient (the fused kernels have no backward
    /// pass and accumulate in f32, the reference arithmetic only for f32 activations).
    pub fn shortcut(self, inputs: &[&Tensor]) -> bool {
        self.fused() && inputs.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn anything_that_tracks_a_gradient_takes_the_differentiable_path() {
        let plain = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let enabled = |inputs: &[&Tensor]| ForwardPath::Fused.shortcut(inputs);
        assert!(enabled(&[&plain]));
        let var = Var::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(!enabled(&[&plain, var.as_tensor()]));
        let derived = (var.as_tensor() * 2.0).unwrap();
        assert!(!enabled(&[&derived]), "a tensor computed from a Var tracks it");
        assert!(!enabled(&[&plain.to_dtype(DType::F64).unwrap()]), "only f32 has the reference arithmetic");
        assert!(!ForwardPath::Candle.shortcut(&[&plain]));
    }

    #[test]
    fn each_path_turns_on_exactly_its_own_parts() {
        use ForwardPath::*;
        let parts = |p: ForwardPath| (p.fused(), p.plain_steps(), p.plain_prefill());
        assert_eq!(parts(Candle), (false, false, false));
        assert_eq!(parts(Fused), (true, false, false));
        assert_eq!(parts(PlainSteps), (true, true, false));
        assert_eq!(parts(Plain), (true, true, true));
    }
}
