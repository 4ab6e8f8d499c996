//! Writes the CRD YAML into `crds/yaml/` and the chart's `crds/` folder.
//!
//! Usage: `cargo run -p sapllm-crds --bin crdgen [-- --check]`; `--check` exits non-zero when the
//! committed files differ from what the types generate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate lives in the workspace").to_path_buf();
    let dirs: [PathBuf; 2] = [root.join("crds/yaml"), root.join("charts/sapllm-operator/crds")];
    let mut stale = Vec::new();
    for crd in sapllm_crds::generate::crds() {
        let text = sapllm_crds::generate::to_yaml(&crd);
        for dir in &dirs {
            let path = dir.join(sapllm_crds::generate::file_name(&crd));
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == text {
                continue;
            }
            if check {
                stale.push(path);
            } else if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, &text)) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        for p in &stale {
            eprintln!("stale: {} (run `cargo run -p sapllm-crds --bin crdgen`)", p.display());
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
