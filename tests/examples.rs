//! Every manifest in `examples/` is accepted by the generated schema (types, ranges, enums and
//! CEL rules), deserializes into the Rust types, and deliberately broken manifests are rejected
//! with an error that names the field.

use sapllm_crds::{Evaluation, LoraTarget, RoutingEndpoint, StageName, TrainingRun};
use sapllm_tests::{manifest_errors, workspace_root};

fn yaml_files(dir: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).expect("readable")))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_accepted() {
    let files = yaml_files("examples");
    assert!(files.len() >= 4, "expected the tiny, mixtral, evaluation and endpoint examples");
    for (path, text) in files {
        let errors = manifest_errors(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(errors.is_empty(), "{path} is rejected:\n{}", errors.join("\n"));
        let kind =
            serde_yaml::from_str::<serde_json::Value>(&text).unwrap()["kind"].as_str().unwrap().to_string();
        let typed = match kind.as_str() {
            "TrainingRun" => serde_yaml::from_str::<TrainingRun>(&text).map(|_| ()),
            "Evaluation" => serde_yaml::from_str::<Evaluation>(&text).map(|_| ()),
            "RoutingEndpoint" => serde_yaml::from_str::<RoutingEndpoint>(&text).map(|_| ()),
            other => panic!("{path}: unexpected kind {other}"),
        };
        typed.unwrap_or_else(|e| panic!("{path} does not deserialize: {e}"));
    }
}

#[test]
fn broken_manifests_are_rejected_naming_the_field() {
    let files = yaml_files("tests/fixtures/invalid");
    assert!(files.len() >= 6, "expected several broken manifests");
    for (path, text) in files {
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{path}: needs a `# expect: <error substring>` line"));
        let errors = manifest_errors(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "{path}: expected an error containing {expect:?}, got {errors:?}"
        );
    }
}

#[test]
fn defaults_reproduce_the_seed() {
    let minimal = r#"
apiVersion: sapllm.io/v1alpha1
kind: TrainingRun
metadata: {name: seed}
spec:
  baseModel: {preset: small}
  storage: {claimName: artifacts}
"#;
    assert!(manifest_errors(minimal).unwrap().is_empty());
    let run: TrainingRun = serde_yaml::from_str(minimal).unwrap();
    let s = &run.spec.stages;
    assert_eq!((s.sft.lora.r, s.sft.lora.alpha), (16, 32.0));
    assert_eq!(s.sft.learning_rate, 2e-5);
    assert_eq!((s.sft.batch_size, s.sft.gradient_accumulation, s.sft.epochs), (2, 8, 3));
    assert_eq!(
        s.sft.lora.target_modules,
        vec![LoraTarget::QProj, LoraTarget::KProj, LoraTarget::VProj, LoraTarget::OProj]
    );
    assert_eq!((s.ppo.iterations, s.ppo.learning_rate, s.ppo.kl_penalty), (5000, 1e-6, 0.05));
    assert_eq!((s.ppo.batch_size, s.ppo.mini_batch_size), (8, 2));
    let w = &s.ppo.reward_weights;
    assert_eq!((w.api, w.business_rules, w.confidence), (0.7, 0.2, 0.1));
    assert_eq!(s.evaluation.samples, 1000);
    assert_eq!(s.evaluation.gates.routing_accuracy, 0.97);
    assert_eq!(
        run.spec.planned_stages(),
        vec![StageName::DataPrep, StageName::Pretrain, StageName::Sft, StageName::Ppo, StageName::Evaluation]
    );
}
