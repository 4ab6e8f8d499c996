//! Which implementation of the forward pass runs: one value, chosen by the caller (the engine's
//! decoding options, a benchmark row, a test) and passed down, instead of a global switch.
//!
//! All paths compute the same function up to float summation order (tested side by side in
//! `mixtral::fused`, `plain` and `tests/model_device_generic.rs`); they differ in what they cost
//! and where they apply.
//!
//! [`ForwardPath::Generic`] is what a GPU executes (candle's built-in ops, the tensor-op NF4
//! dequantization, no CPU kernel), runnable on the CPU: CI has no GPU, so the CPU tests compare
//! it with the CPU fast paths. [`cpu_kernels_taken`] counts, per thread, how often a CPU-only
//! kernel was chosen, so a test can tell that a run really took none.

use std::cell::Cell;

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
    /// The device-generic formulation: what runs on a GPU, on whatever device the model is.
    /// [`ForwardPath::Candle`]'s graph with no CPU-only kernel in the linear layers either:
    /// frozen weights multiply with candle's `matmul` (not the `FrozenMatmul` custom op), int8
    /// weights are dequantized and multiplied (not the direct int8 kernel), NF4 weights on the
    /// CPU are dequantized by tensor ops (`Nf4Tensor::dequantize_with_tensor_ops`, not the
    /// one-pass CPU loop; a GPU runs its NF4 kernel, which gives the same values bit for bit).
    /// On a CPU it exists to be tested: CI has no GPU, and the CPU tests hold this path to the CPU
    /// fast paths' results (`tests/model_device_generic.rs`). What still differs from a GPU run
    /// there is layout, not arithmetic: the KV cache hands candle's CPU matmul strided views
    /// where other devices get contiguous copies.
    Generic,
}

thread_local! {
    /// CPU-only kernels chosen on this thread (see [`cpu_kernels_taken`]).
    static CPU_KERNELS: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has chosen a CPU-only kernel (a fused shortcut, the
/// `FrozenMatmul` op, the direct int8 kernel, the one-pass NF4 dequantization). A counter, not a
/// switch: tests read it before and after a forward to check that [`ForwardPath::Generic`] took
/// none and that the fast path did take some (so the comparison is not of a path with itself).
pub fn cpu_kernels_taken() -> u64 {
    CPU_KERNELS.with(Cell::get)
}

/// Counts one CPU-only kernel chosen on this thread.
pub(crate) fn note_cpu_kernel() {
    CPU_KERNELS.with(|c| c.set(c.get() + 1));
}

impl ForwardPath {
    /// This path where it applies on `device`: the plain-slice forward, the fused kernels and
    /// the linear layers' CPU kernels are CPU code, so on any other device the model runs the
    /// device-generic formulation, [`ForwardPath::Generic`].
    pub fn for_device(self, device: &candle_core::Device) -> Self {
        if device.is_cpu() { self } else { ForwardPath::Generic }
    }

    /// Whether the candle graph takes its in-graph shortcuts.
    pub fn fused(self) -> bool {
        !matches!(self, ForwardPath::Candle | ForwardPath::Generic)
    }

    /// Whether the linear layers may use their CPU kernels (where the data is on the CPU):
    /// every path but [`ForwardPath::Generic`].
    pub fn cpu_kernels(self) -> bool {
        self != ForwardPath::Generic
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
        let taken = self.fused()
            && inputs.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op());
        if taken {
            note_cpu_kernel();
        }
        taken
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
        assert!(!ForwardPath::Generic.shortcut(&[&plain]));
    }

    #[test]
    fn each_path_turns_on_exactly_its_own_parts() {
        use ForwardPath::*;
        let parts = |p: ForwardPath| (p.cpu_kernels(), p.fused(), p.plain_steps(), p.plain_prefill());
        assert_eq!(parts(Generic), (false, false, false, false));
        assert_eq!(parts(Candle), (true, false, false, false));
        assert_eq!(parts(Fused), (true, true, false, false));
        assert_eq!(parts(PlainSteps), (true, true, true, false));
        assert_eq!(parts(Plain), (true, true, true, true));
    }

    #[test]
    fn off_the_cpu_every_path_is_the_device_generic_one() {
        use ForwardPath::*;
        for p in [Candle, Fused, PlainSteps, Plain, Generic] {
            assert_eq!(p.for_device(&Device::Cpu), p, "the CPU keeps what was asked for");
        }
        // No second device here without the `cuda` feature; the rule is the one branch above.
        #[cfg(feature = "cuda")]
        if let Ok(gpu) = Device::new_cuda(0) {
            for p in [Candle, Fused, PlainSteps, Plain, Generic] {
                assert_eq!(p.for_device(&gpu), Generic);
            }
        }
    }

    #[test]
    fn shortcuts_taken_are_counted_on_the_calling_thread() {
        let plain = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let before = cpu_kernels_taken();
        assert!(!ForwardPath::Generic.shortcut(&[&plain]));
        assert_eq!(cpu_kernels_taken(), before);
        assert!(ForwardPath::Fused.shortcut(&[&plain]));
        assert_eq!(cpu_kernels_taken(), before + 1);
    }
}
