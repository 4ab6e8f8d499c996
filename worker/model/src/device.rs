//! Which device a process computes on, chosen once at start-up (`--device`): every stage of one
//! worker process runs on one device, the way it runs on one thread pool (see [`crate::threads`]).
//!
//! `auto` is the first visible CUDA device in a build with the `cuda` feature, the CPU
//! otherwise. Asking for CUDA from a build without the feature is an error that names the fix,
//! never a silent CPU run. On a CUDA device the CPU fast paths (plain-slice forward, AVX
//! kernels, the in-graph fused ops) do not apply: callers use [`ForwardPath::for_device`]
//! (`crate::path`), which keeps them to the CPU.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Result, bail};
use candle_core::Device;

/// A device as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when this build has CUDA and one is visible, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}; expected auto, cpu, cuda or cuda:N (N a device index)"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build can compute on CUDA devices.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

impl DeviceSpec {
    /// The candle device this names.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto if !CUDA_BUILD => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(Device::new_cuda(0).unwrap_or(Device::Cpu)),
            DeviceSpec::Cuda(n) if !CUDA_BUILD => bail!(
                "--device cuda:{n}: this sapllm-worker was built without CUDA support; use the CUDA build \
                 (`cargo build --release --features cuda`, or the worker image built with CARGO_FEATURES=cuda) \
                 or pass --device cpu"
            ),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                anyhow::anyhow!("--device cuda:{n}: no usable CUDA device {n} ({e}); check `nvidia-smi` and the pod's GPU limit")
            }),
        }
    }
}

/// How a device is reported (stage results, `/v1/models`): `cpu` or `cuda:N`.
pub fn describe(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

static SELECTED: OnceLock<Device> = OnceLock::new();

/// Chooses the process's device (once, at start-up; a second call keeps the first choice and
/// fails if it differs).
pub fn select(spec: DeviceSpec) -> Result<Device> {
    let d = spec.resolve()?;
    let chosen = SELECTED.get_or_init(|| d.clone());
    if !chosen.same_device(&d) {
        bail!("the device was already chosen ({}); one process computes on one device", describe(chosen));
    }
    Ok(chosen.clone())
}

/// The process's device: what [`select`] chose, the CPU when nothing was (library use, tests).
pub fn selected() -> Device {
    SELECTED.get().cloned().unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_the_command_line_names_them() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().contains("cuda:N"));
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn without_the_cuda_feature_cuda_is_an_error_naming_the_fix_and_auto_is_the_cpu() {
        if CUDA_BUILD {
            return;
        }
        let e = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
        assert!(e.contains("--features cuda") && e.contains("--device cpu"), "{e}");
        assert!(DeviceSpec::Auto.resolve().unwrap().is_cpu());
        assert_eq!(describe(&Device::Cpu), "cpu");
    }
}
