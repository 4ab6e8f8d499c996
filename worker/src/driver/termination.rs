//! The stage result in the container's termination message, where the operator reads it from
//! the pod status (Kubernetes keeps at most 4 KiB).

use std::path::PathBuf;

use sapllm_crds::contract::{StageResult, TERMINATION_LOG_ENV};

/// Kubernetes truncates termination messages beyond this.
const MAX_BYTES: usize = 4096;

/// The termination-message file: only the one the contract's variable names (the operator sets
/// it in its Jobs). A file that merely exists at the default path is not ours to write.
fn path() -> Option<PathBuf> {
    path_from(std::env::var(TERMINATION_LOG_ENV).ok())
}

fn path_from(var: Option<String>) -> Option<PathBuf> {
    var.filter(|p| !p.trim().is_empty()).map(PathBuf::from)
}

/// The JSON of a result, shortened to fit: per-type detail goes first, then the message.
pub fn encode(result: &StageResult) -> String {
    let mut r = result.clone();
    let mut text = serde_json::to_string(&r).expect("a stage result serializes");
    if text.len() > MAX_BYTES {
        r.gates.clear();
        text = serde_json::to_string(&r).expect("serializes");
    }
    if text.len() > MAX_BYTES
        && let Some(m) = &mut r.message
    {
        m.truncate(512);
        text = serde_json::to_string(&r).expect("serializes");
    }
    text
}

/// Writes the result where the kubelet picks it up, with the device the process computed on;
/// a no-op unless the contract's variable names the file.
pub fn write(result: &StageResult) {
    let mut result = result.clone();
    result.device.get_or_insert_with(|| sapllm_model::device::describe(&sapllm_model::device::selected()));
    if let Some(p) = path()
        && let Err(e) = std::fs::write(&p, encode(&result))
    {
        tracing::warn!("could not write the termination message to {}: {e}", p.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapllm_crds::GateResult;

    #[test]
    fn only_the_file_the_contract_names_is_written() {
        assert_eq!(
            path_from(None),
            None,
            "unset: no termination message, even if /dev/termination-log exists"
        );
        assert_eq!(path_from(Some(" ".into())), None);
        assert_eq!(
            path_from(Some("/dev/termination-log".into())),
            Some(PathBuf::from("/dev/termination-log"))
        );
    }

    #[test]
    fn oversized_results_are_shortened_to_fit() {
        let gate = GateResult {
            name: "x".repeat(100),
            comparator: ">=".into(),
            threshold: 1.0,
            value: 0.5,
            passed: false,
        };
        let r = StageResult {
            succeeded: false,
            message: Some("m".repeat(6000)),
            gates: vec![gate; 50],
            ..Default::default()
        };
        let text = encode(&r);
        assert!(text.len() <= MAX_BYTES, "{} bytes", text.len());
        let back: StageResult = serde_json::from_str(&text).unwrap();
        assert!(!back.succeeded);
        assert!(back.message.unwrap().len() == 512);
    }
}
