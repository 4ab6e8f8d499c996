//! How much memory the GPU a pod asks for has: a quantity written in the spec (`gpuMemory`), or
//! a node-selector label that names a GPU model.

use std::collections::BTreeMap;

/// One MiB.
const MIB: u64 = 1 << 20;

/// Node labels whose value names a GPU model, and that model's memory in MiB as `nvidia-smi`
/// reports it (`memory.total`; the CUDA context comes out of it, see the plan's overhead).
/// `nvidia.com/gpu.product` is set by NVIDIA GPU feature discovery (the GPU operator),
/// `cloud.google.com/gke-accelerator` by GKE.
pub const KNOWN_GPUS: &[(&str, &str, u64)] = &[
    ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3", 81559),
    ("nvidia.com/gpu.product", "NVIDIA-H100-PCIe", 81559),
    ("nvidia.com/gpu.product", "NVIDIA-H200", 143771),
    ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB", 81920),
    ("nvidia.com/gpu.product", "NVIDIA-A100-80GB-PCIe", 81920),
    ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB", 40960),
    ("nvidia.com/gpu.product", "NVIDIA-A100-PCIE-40GB", 40960),
    ("nvidia.com/gpu.product", "NVIDIA-L40S", 46068),
    ("nvidia.com/gpu.product", "NVIDIA-L4", 23034),
    ("nvidia.com/gpu.product", "NVIDIA-A10G", 23028),
    ("nvidia.com/gpu.product", "Tesla-T4", 15360),
    ("cloud.google.com/gke-accelerator", "nvidia-h200-141gb", 143771),
    ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb", 81559),
    ("cloud.google.com/gke-accelerator", "nvidia-h100-mega-80gb", 81559),
    ("cloud.google.com/gke-accelerator", "nvidia-a100-80gb", 81920),
    ("cloud.google.com/gke-accelerator", "nvidia-tesla-a100", 40960),
    ("cloud.google.com/gke-accelerator", "nvidia-l4", 23034),
    ("cloud.google.com/gke-accelerator", "nvidia-tesla-t4", 15360),
];

/// The label GPU feature discovery sets to the GPU's memory in MiB (`nvidia.com/gpu.memory:
/// "81559"`); selecting on it states the memory directly.
pub const GPU_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";

/// The GPU memory a node selector pins down: `(label=value, bytes)` for the first label that
/// names a known model or the memory itself; `None` when no label does (nothing is assumed).
pub fn from_node_selector(selector: &BTreeMap<String, String>) -> Option<(String, u64)> {
    if let Some(v) = selector.get(GPU_MEMORY_LABEL)
        && let Ok(mib) = v.trim().parse::<u64>()
    {
        return Some((format!("{GPU_MEMORY_LABEL}={v}"), mib * MIB));
    }
    KNOWN_GPUS
        .iter()
        .find(|(key, value, _)| selector.get(*key).is_some_and(|v| v == value))
        .map(|(key, value, mib)| (format!("{key}={value}"), mib * MIB))
}

/// Bytes of a Kubernetes quantity ("80Gi", "40G", "81559Mi", "8e10", "1.5Ti"). Fractions of a
/// byte are rounded down. The error says what is accepted.
pub fn parse_quantity_bytes(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let bad = || format!("{q:?} is not a quantity of bytes (e.g. \"80Gi\", \"40G\", \"81559Mi\")");
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let bytes = value * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_kubernetes_suffixes() {
        assert_eq!(parse_quantity_bytes("80Gi"), Ok(80 * (1 << 30)));
        assert_eq!(parse_quantity_bytes("80G"), Ok(80_000_000_000));
        assert_eq!(parse_quantity_bytes("81559Mi"), Ok(81559 * MIB));
        assert_eq!(parse_quantity_bytes("1.5Ti"), Ok(3 * (1 << 39)));
        assert_eq!(parse_quantity_bytes("8e10"), Ok(80_000_000_000));
        assert_eq!(parse_quantity_bytes("1024"), Ok(1024));
        for bad in ["", "Gi", "80GB", "eighty", "1.2.3Gi", "-1Gi"] {
            let err = parse_quantity_bytes(bad).unwrap_err();
            assert!(err.contains("80Gi"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_gpu_model_label_or_the_memory_label_names_the_memory() {
        let sel = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            from_node_selector(&sel("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB")),
            Some(("nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB".into(), 40 << 30))
        );
        assert_eq!(
            from_node_selector(&sel("cloud.google.com/gke-accelerator", "nvidia-h100-80gb")).unwrap().1,
            81559 * MIB
        );
        assert_eq!(from_node_selector(&sel(GPU_MEMORY_LABEL, "24576")).unwrap().1, 24 << 30);
        assert_eq!(from_node_selector(&sel("nvidia.com/gpu.product", "NVIDIA-Unknown")), None);
        assert_eq!(from_node_selector(&sel("pool", "gpu")), None);
    }
}
