//! The model version: a content digest of the base weights and the final adapter, so two runs
//! that produce the same bytes name the same version and any change names a new one.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` over the files of each folder (relative path + contents, in sorted order).
/// Checkpoint subfolders and reports (`*_report.json`, which hold timings) are left out: only
/// what serving loads counts, so two runs that write the same weights name the same version.
pub fn model_version(folders: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    for folder in folders {
        let mut files: Vec<_> = std::fs::read_dir(folder)
            .with_context(|| format!("reading {}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.ends_with(".safetensors") || (name.ends_with(".json") && !name.ends_with("_report.json"))
            })
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            h.update(name.as_bytes());
            h.update([0]);
            let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        h.update([0xff]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_changes_with_content_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("model.safetensors"), b"weights").unwrap();
        std::fs::write(p.join("config.json"), b"{}").unwrap();
        let a = model_version(&[p]).unwrap();
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        std::fs::write(p.join("loss_curve.png"), b"png").unwrap();
        assert_eq!(model_version(&[p]).unwrap(), a, "reports do not change the version");
        std::fs::write(p.join("pretrain_report.json"), br#"{"elapsed_s":451.2}"#).unwrap();
        assert_eq!(model_version(&[p]).unwrap(), a, "nor does a stage report with its timings");
        std::fs::write(p.join("model.safetensors"), b"weightz").unwrap();
        assert_ne!(model_version(&[p]).unwrap(), a);
    }
}
