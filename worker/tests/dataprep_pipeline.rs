//! The data-prep stage end to end on small synthetic data and on JSONL logs: files and fields,
//! split hygiene (no document in two splits, near-duplicates together), the similar-case leak
//! check, determinism, preference margins, exception coverage, and bad input handling.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use sapllm_sap::documents::DocType;
use sapllm_sap::documents::signals::detect;
use sapllm_worker::dataprep::synth::Generator;
use sapllm_worker::dataprep::{self, DataPrepConfig, DatasetCard, Source};
use serde_json::Value;

fn read(dir: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn run(dir: &Path, n: usize, seed: u64) -> DatasetCard {
    let cfg =
        DataPrepConfig { examples: n, seed, output_dir: dir.to_path_buf(), ..DataPrepConfig::default() };
    dataprep::run(&cfg).unwrap()
}

const SPLITS: [&str; 3] = ["train", "val", "test"];

#[test]
fn synthetic_run_writes_every_file_with_the_documented_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let card = run(tmp.path(), 1200, 42);
    for f in &card.files {
        assert!(tmp.path().join(f).exists(), "{f} missing");
    }
    let mut total = 0;
    for s in SPLITS {
        let rows = read(tmp.path(), &format!("{s}_routing_examples.jsonl"));
        assert_eq!(rows.len() as u64, card.splits[s], "card counts {s}");
        total += rows.len();
        for r in &rows {
            for k in [
                "doc_id",
                "doc_type",
                "adc_json",
                "api_schemas",
                "similar_cases",
                "target_endpoint",
                "target_payload",
                "reasoning_trace",
                "confidence",
                "success",
                "feedback",
            ] {
                assert!(r.get(k).is_some(), "{s}: {k} missing in {r}");
            }
            let c = r["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c));
            let trace = r["reasoning_trace"].as_array().unwrap();
            let last = trace.last().unwrap().as_str().unwrap();
            assert!(
                last.contains(r["target_endpoint"].as_str().unwrap()),
                "trace ends with the decision: {last}"
            );
            assert!(trace[0].as_str().unwrap().contains(r["doc_type"].as_str().unwrap()));
            assert!(
                r["api_schemas"].as_array().unwrap().iter().any(|c| c["doc_types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d == &r["doc_type"])),
                "an API serving the document type is among the candidates"
            );
        }
    }
    assert_eq!(total, 1200);
    let pairs = read(tmp.path(), "preference_pairs.jsonl");
    assert_eq!(pairs.len() as u64, card.preference_pairs);
    for p in &pairs {
        let m = p["margin"].as_f64().unwrap();
        assert!(m > 0.0);
        let diff = p["chosen"]["reward"].as_f64().unwrap() - p["rejected"]["reward"].as_f64().unwrap();
        assert!((diff - m).abs() < 1e-9);
    }
    let exc = read(tmp.path(), "exception_examples.jsonl");
    assert_eq!(exc.len() as u64, card.exception_examples);
    let actions: HashSet<&str> = exc.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["AUTO_CORRECT", "RETRY", "ESCALATE", "REJECT", "APPLY_RULE"] {
        assert!(actions.contains(a), "no {a} example among {actions:?}");
    }
    for e in &exc {
        if e["action"] == "AUTO_CORRECT" || e["action"] == "APPLY_RULE" {
            assert!(!e["correction"].as_array().unwrap().is_empty(), "{e}");
        }
        if e["action"] == "RETRY" {
            assert!(e["retry"]["max_attempts"].as_u64().unwrap() > 0);
        }
    }
    let md = std::fs::read_to_string(tmp.path().join("dataset_card.md")).unwrap();
    assert!(md.contains("| supplier_invoice |") && md.contains("Rule failures"));
}

#[test]
fn no_document_in_two_splits_near_duplicates_together_and_no_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 1500;
    let card = run(tmp.path(), n, 7);
    assert_eq!(card.retrieval.leak_violations, 0);
    let mut split_of: HashMap<String, &str> = HashMap::new();
    let mut rows_by_split = HashMap::new();
    for s in SPLITS {
        let rows = read(tmp.path(), &format!("{s}_routing_examples.jsonl"));
        for r in &rows {
            let id = r["doc_id"].as_str().unwrap().to_string();
            assert!(split_of.insert(id.clone(), s).is_none(), "{id} appears twice");
        }
        rows_by_split.insert(s, rows);
    }
    // Leak check: every similar case is a train document, never the example itself or its
    // near-duplicate group.
    let g = Generator::new(&DataPrepConfig { seed: 7, ..DataPrepConfig::default() });
    let id_of = |i: u64| g.log(i).document_id;
    let mut dup_pairs = 0;
    let mut group_partner: HashMap<String, String> = HashMap::new();
    for i in 0..n as u64 {
        if let Some(base) = g.record(i).duplicate_of {
            dup_pairs += 1;
            let (a, b) = (id_of(i), id_of(base));
            assert_eq!(split_of[&a], split_of[&b], "near-duplicate {a} of {b} split apart");
            group_partner.insert(a.clone(), b.clone());
            group_partner.insert(b, a);
        }
    }
    assert!(dup_pairs > 10, "the generator makes resubmissions ({dup_pairs})");
    let mut with_similar = 0;
    for (s, rows) in &rows_by_split {
        for r in rows {
            let me = r["doc_id"].as_str().unwrap();
            for c in r["similar_cases"].as_array().unwrap() {
                let id = c["doc_id"].as_str().unwrap();
                assert_eq!(split_of[id], "train", "{s} example {me} retrieved non-train case {id}");
                assert_ne!(id, me, "an example must not retrieve itself");
                assert_eq!(c["doc_type"], r["doc_type"], "{me} retrieved a case of another document type");
                assert_ne!(
                    group_partner.get(me).map(String::as_str),
                    Some(id),
                    "{me} retrieved its own near-duplicate"
                );
            }
            with_similar += usize::from(!r["similar_cases"].as_array().unwrap().is_empty());
        }
    }
    // A case must be of the same type AND share an identifier (partner, reference, material):
    // about four in five synthetic documents have one in the train split.
    assert!(with_similar > n * 7 / 10, "most examples get similar cases ({with_similar})");
}

#[test]
fn same_seed_same_files_other_seed_other_data() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    run(a.path(), 300, 11);
    run(b.path(), 300, 11);
    for f in ["train_routing_examples.jsonl", "exception_examples.jsonl", "preference_pairs.jsonl"] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f} differs"
        );
    }
    let c = tempfile::tempdir().unwrap();
    run(c.path(), 300, 12);
    assert_ne!(
        std::fs::read(a.path().join("train_routing_examples.jsonl")).unwrap(),
        std::fs::read(c.path().join("train_routing_examples.jsonl")).unwrap()
    );
}

#[test]
fn document_types_are_distinguishable_from_content_including_ambiguous_cases() {
    let cfg = DataPrepConfig { ambiguous_rate: 0.3, ..DataPrepConfig::default() };
    let g = Generator::new(&cfg);
    let (mut right, mut ambiguous_right, mut ambiguous) = (0, 0, 0);
    let n = 1000;
    for i in 0..n {
        let r = g.record(i);
        let t: DocType = r.log.document_type.parse().unwrap();
        // Keys as the engine reads them (a share of documents is respelled like extraction
        // systems write keys).
        let d = detect(&cfg.catalog.normalize(t, &r.log.extracted_data).document);
        right += usize::from(d.best == t);
        if r.variant == "titled_invoice_negative_amounts" {
            ambiguous += 1;
            ambiguous_right += usize::from(d.best == t);
        }
    }
    assert!(right as f64 >= 0.97 * n as f64, "{right}/{n} detected");
    assert!(
        ambiguous > 5 && ambiguous_right == ambiguous,
        "credit memos titled Invoice: {ambiguous_right}/{ambiguous}"
    );
}

fn write_log(path: &Path, n: u64, corrupt: &[(usize, &str)]) {
    let g = Generator::new(&DataPrepConfig::default());
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        let line = match corrupt.iter().find(|(l, _)| *l == i as usize + 1) {
            Some((_, bad)) => bad.to_string(),
            None => serde_json::to_string(&g.log(i)).unwrap(),
        };
        writeln!(f, "{line}").unwrap();
    }
}

#[test]
fn log_file_input_reports_bad_lines_or_skips_and_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log.jsonl");
    let bad_type = r#"{"document_id":"X1","document_type":"invoice","extracted_data":{},"success":false}"#;
    let bad_amount = r#"{"document_id":"X2","document_type":"supplier_invoice","extracted_data":{"gross_amount":"lots"},"success":false}"#;
    write_log(&log, 200, &[(5, bad_type), (17, "{oops"), (40, bad_amount)]);
    let out = tmp.path().join("out");
    let cfg = DataPrepConfig {
        source: Source::LogFile(log.clone()),
        output_dir: out.clone(),
        ..DataPrepConfig::default()
    };
    let err = dataprep::run(&cfg).unwrap_err().to_string();
    assert!(err.contains("line 5: field document_type") && err.contains("--skip-invalid"), "{err}");

    let card = dataprep::run(&DataPrepConfig { skip_invalid: true, ..cfg }).unwrap();
    assert_eq!(card.invalid_lines, 3);
    assert_eq!(card.records_read, 200);
    assert_eq!(card.splits.values().sum::<u64>(), 197);
    let lines: Vec<u64> = card.invalid_samples.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![5, 17, 40]);
    assert_eq!(card.invalid_samples[2].field, "extracted_data.gross_amount");
    let json: DatasetCard =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset_card.json")).unwrap()).unwrap();
    assert_eq!(json.invalid_lines, 3);
}

#[test]
fn bad_configuration_is_rejected_with_the_setting_named() {
    let bad = DataPrepConfig {
        split: dataprep::SplitFractions { train: 0.5, val: 0.1, test: 0.1 },
        ..DataPrepConfig::default()
    };
    assert!(dataprep::run(&bad).unwrap_err().to_string().contains("sum to 1"));
    let bad = DataPrepConfig { error_rate: 1.5, ..DataPrepConfig::default() };
    assert!(dataprep::run(&bad).unwrap_err().to_string().contains("error_rate"));
    let tmp = tempfile::tempdir().unwrap();
    let missing = DataPrepConfig {
        source: Source::LogFile("/nonexistent/log.jsonl".into()),
        output_dir: tmp.path().to_path_buf(),
        ..DataPrepConfig::default()
    };
    let e = format!("{:#}", dataprep::run(&missing).unwrap_err());
    assert!(e.contains("/nonexistent/log.jsonl"), "{e}");
}

#[test]
fn candidate_order_carries_no_cue_about_the_target() {
    // The catalog lists the serving API first; examples must not, or "take the first
    // candidate" scores perfectly and the model never learns to match the document type.
    let tmp = tempfile::tempdir().unwrap();
    run(tmp.path(), 600, 7);
    let rows = read(tmp.path(), "train_routing_examples.jsonl");
    let multi: Vec<&Value> =
        rows.iter().filter(|r| r["api_schemas"].as_array().unwrap().len() >= 3).collect();
    let first_is_target =
        multi.iter().filter(|r| r["api_schemas"][0]["endpoint"] == r["target_endpoint"]).count();
    assert!(multi.len() > 100, "{} examples with 3+ candidates", multi.len());
    let share = first_is_target as f64 / multi.len() as f64;
    assert!(share < 0.6, "the target is the first candidate in {:.0} % of examples", 100.0 * share);
    // Deterministic: the same seed gives the same order.
    let again = tempfile::tempdir().unwrap();
    run(again.path(), 600, 7);
    assert_eq!(read(again.path(), "train_routing_examples.jsonl"), rows);
}
