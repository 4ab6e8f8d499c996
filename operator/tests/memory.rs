//! The operator refuses a TrainingRun or RoutingEndpoint whose memory plan does not fit the GPU
//! it requests, and refuses nothing when the GPU or the model is not known.

mod support;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sapllm_crds::endpoint::RoutingEndpoint;
use sapllm_crds::training_run::{ModelPreset, RunPhase, TrainingRun};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::invalid::Invalid;
use sapllm_operator::{endpoint, memory, training};
use support::{at, input};

/// The Mixtral-8x7B run with its architecture declared (its node selector names an H100 80GB
/// on GKE: 81559 MiB).
fn mixtral() -> TrainingRun {
    let mut run: TrainingRun = input("tr-mixtral");
    run.spec.base_model.architecture = Some(ModelPreset::Mixtral8x7b);
    run
}

fn cfg() -> OperatorConfig {
    OperatorConfig::default()
}

#[test]
fn qlora_on_mixtral_fits_the_h100_its_node_selector_names() {
    assert_eq!(memory::check_training_run(&mixtral(), &cfg()), Ok(()));
    let gpu = memory::gpu_memory(&mixtral().spec.worker, &cfg(), "spec.worker").unwrap().unwrap();
    assert_eq!(gpu.bytes, 81559 << 20);
    assert_eq!(gpu.source, "node selector cloud.google.com/gke-accelerator=nvidia-h100-80gb");
}

#[test]
fn the_mixtral_example_fits_and_declares_its_architecture() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/trainingrun-mixtral-8x7b.yaml"
    ))
    .unwrap();
    let mut run: TrainingRun = serde_yaml::from_str(&text).unwrap();
    run.metadata.namespace = Some("ml".into());
    assert_eq!(run.spec.base_model.architecture, Some(ModelPreset::Mixtral8x7b));
    assert_eq!(memory::check_training_run(&run, &cfg()), Ok(()));
    // Planned on a 40 GB A100 instead, it is refused (the int8 evaluation needs 50.8 GiB).
    run.spec.worker.node_selector.clear();
    run.spec.worker.node_selector.insert("nvidia.com/gpu.product".into(), "NVIDIA-A100-SXM4-40GB".into());
    assert_eq!(memory::check_training_run(&run, &cfg()).unwrap_err().field, "spec.stages.evaluation");
}

#[test]
fn sft_without_checkpointing_at_2048_is_refused_on_an_h100_with_the_numbers() {
    let mut run = mixtral();
    run.spec.stages.sft.max_sequence_length = 2048;
    run.spec.stages.sft.gradient_checkpointing = false;
    run.spec.worker.node_selector.clear();
    run.spec.worker.node_selector.insert("nvidia.com/gpu.product".into(), "NVIDIA-H100-80GB-HBM3".into());
    let err = memory::check_training_run(&run, &cfg()).unwrap_err();
    assert_eq!(
        err,
        Invalid::new(
            "spec.stages.sft",
            concat!(
                "stage sft needs 90.2 GiB on the device; ",
                "the requested GPU has 79.6 GiB (node selector nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3): ",
                "activations (2 x 2048, no checkpointing) 58.3 GiB, base weights (nf4) 22.8 GiB, ",
                "overhead (1 GiB + 5 %) 5.2 GiB, dequantized layer (bf16) 2.7 GiB, logits (f32) 1.0 GiB, ",
                "adamw states (2 x f32) 0.1 GiB, lora adapters (f32) 0.1 GiB, gradients (f32) 0.1 GiB; ",
                "stages that do not fit either: ppo 92.4 GiB; fix: ",
                "turn on spec.stages.sft.gradientCheckpointing, ",
                "lower spec.stages.sft.batchSize or maxSequenceLength, ",
                "or request a GPU with at least 92.4 GiB (spec.worker.gpuMemory, ",
                "or a node selector for a larger GPU)"
            )
        ),
    );
    let (status, events) = training::invalid_status(&run, &err, at(0));
    assert_eq!(status.phase, Some(RunPhase::Failed));
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "InvalidSpec"));
    assert_eq!(failed.message, format!("spec.stages.sft: {}", err.message));
    assert_eq!(events.len(), 1);
    // Checkpointing back on: 33.8 GiB, accepted.
    run.spec.stages.sft.gradient_checkpointing = true;
    assert_eq!(memory::check_training_run(&run, &cfg()), Ok(()));
}

#[test]
fn a_40gb_gpu_is_refused_for_the_int8_evaluation_though_sft_fits() {
    let mut run = mixtral();
    run.spec.worker.gpu_memory = Some(Quantity("40Gi".into()));
    let err = memory::check_training_run(&run, &cfg()).unwrap_err();
    // int8 weights 47,001,116,672 + one layer in bf16 2,902,458,368 + KV 1536 x 131,072 =
    // 201,326,592 + prefill 1536 x 198,672 x 2 + 1536 x 32000 x 4 = 806,928,384: 50,911,830,016
    // named, + 1 GiB + 5 % = 54,531,163,340 (50.8 GiB). SFT (29.2 GiB) and PPO fit.
    assert_eq!(
        err,
        Invalid::new(
            "spec.stages.evaluation",
            concat!(
                "stage evaluation needs 50.8 GiB on the device; ",
                "the requested GPU has 40.0 GiB (spec.worker.gpuMemory 40Gi): ",
                "base weights (int8) 43.8 GiB, overhead (1 GiB + 5 %) 3.4 GiB, ",
                "dequantized layer (bf16) 2.7 GiB, prefill activations (1 x 1536) 0.8 GiB, ",
                "kv cache (1 x 1536) 0.2 GiB; fix: ",
                "request a GPU with at least 50.8 GiB (spec.worker.gpuMemory, ",
                "or a node selector for a larger GPU); no setting shrinks this stage"
            )
        )
    );
}

#[test]
fn nothing_is_refused_without_a_known_gpu_a_known_model_or_a_gpu_at_all() {
    // No architecture: a Hugging Face base is not planned.
    let mut run: TrainingRun = input("tr-mixtral");
    run.spec.worker.gpu_memory = Some(Quantity("1Gi".into()));
    assert_eq!(memory::check_training_run(&run, &cfg()), Ok(()));
    // No GPU memory stated and no label naming a GPU model.
    let mut run = mixtral();
    run.spec.worker.node_selector.clear();
    assert_eq!(memory::check_training_run(&run, &cfg()), Ok(()));
    // gpus: 0 (the tiny run): CPU pods are not planned.
    let mut tiny: TrainingRun = input("tr-tiny");
    tiny.spec.worker.gpu_memory = Some(Quantity("1Mi".into()));
    assert_eq!(memory::check_training_run(&tiny, &cfg()), Ok(()));
    // The operator's default node selector counts (the run's own selector wins per key).
    let mut run = mixtral();
    run.spec.worker.node_selector.clear();
    let small = OperatorConfig {
        default_node_selector: [("nvidia.com/gpu.product".to_string(), "NVIDIA-L4".to_string())].into(),
        ..cfg()
    };
    assert!(memory::check_training_run(&run, &small).is_err());
}

#[test]
fn an_unreadable_gpu_memory_names_the_field() {
    let mut run = mixtral();
    run.spec.worker.gpu_memory = Some(Quantity("80GB".into()));
    let err = memory::check_training_run(&run, &cfg()).unwrap_err();
    assert_eq!(err.field, "spec.worker.gpuMemory");
    assert!(err.message.contains("\"80GB\" is not a quantity of bytes"), "{}", err.message);
}

/// The example endpoint on one GPU of an A100 80GB node, serving Mixtral-8x7B.
fn gpu_endpoint(precision: &str) -> RoutingEndpoint {
    let mut r: RoutingEndpoint = input("rep-latest");
    r.spec.architecture = Some(ModelPreset::Mixtral8x7b);
    r.spec.precision = serde_json::from_value(serde_json::json!(precision)).unwrap();
    r.spec
        .resources
        .as_mut()
        .unwrap()
        .limits
        .as_mut()
        .unwrap()
        .insert("nvidia.com/gpu".into(), Quantity("1".into()));
    r.spec.worker.node_selector.insert("nvidia.com/gpu.product".into(), "NVIDIA-A100-SXM4-80GB".into());
    r.spec.batching.workers = Some(1);
    r
}

#[test]
fn int8_serving_of_mixtral_fits_an_80gb_gpu_and_bf16_is_refused() {
    assert_eq!(memory::check_endpoint(&gpu_endpoint("int8"), &cfg()), Ok(()));
    let r = gpu_endpoint("bf16");
    let err = memory::check_endpoint(&r, &cfg()).unwrap_err();
    assert_eq!(
        err,
        Invalid::new(
            "spec.precision",
            concat!(
                "stage serve needs 103.4 GiB on the device; ",
                "the requested GPU has 80.0 GiB (node selector nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB): ",
                "base weights (bf16) 87.0 GiB, prefill activations (8 x 2048) 8.5 GiB, ",
                "overhead (1 GiB + 5 %) 5.9 GiB, kv cache (8 x 2048) 2.0 GiB; fix: ",
                "serve with spec.precision int8 or int4, ",
                "lower spec.batching.maxBatch or spec.batching.workers, ",
                "or request a GPU with at least 103.4 GiB (spec.worker.gpuMemory, ",
                "or a node selector for a larger GPU)"
            )
        )
    );
    let (status, events) = endpoint::invalid_status(&r, &err, at(0));
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str(), progressing.message.as_str()),
        ("False", "InvalidSpec", err.to_string().as_str())
    );
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec"),
        "nothing serves yet"
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(events.len(), 1);
    assert!(events[0].warning && events[0].reason == "InvalidSpec");
    // Written again unchanged, no second event.
    let mut again = r.clone();
    again.status = Some(status.clone());
    let (status2, events2) = endpoint::invalid_status(&again, &err, at(60));
    assert_eq!(status2, status);
    assert!(events2.is_empty());
    // A version already serving keeps Ready as it was.
    let mut serving = r.clone();
    serving.status = Some(sapllm_crds::endpoint::RoutingEndpointStatus {
        active_version: Some("sha256:aa".into()),
        ..Default::default()
    });
    let (status3, _) = endpoint::invalid_status(&serving, &err, at(0));
    assert!(status3.conditions.iter().all(|c| c.type_ != "Ready"));
}

#[test]
fn an_endpoint_without_a_gpu_or_without_an_architecture_is_not_planned() {
    let mut cpu: RoutingEndpoint = input("rep-latest");
    cpu.spec.architecture = Some(ModelPreset::Mixtral8x7b);
    cpu.spec.precision = sapllm_crds::common::Precision::Bf16;
    cpu.spec.worker.gpu_memory = Some(Quantity("1Gi".into()));
    assert_eq!(memory::check_endpoint(&cpu, &cfg()), Ok(()), "CPU serving is not a GPU's business");
    let mut unknown = gpu_endpoint("bf16");
    unknown.spec.architecture = None;
    assert_eq!(memory::check_endpoint(&unknown, &cfg()), Ok(()));
}
