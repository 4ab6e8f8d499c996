//! The committed CRD YAML is what the types generate, and every schema is structural.

use sapllm_crds::generate;
use sapllm_tests::{openapi_schema, structural_violations, workspace_root};

#[test]
fn committed_crd_yaml_matches_the_types() {
    let root = workspace_root();
    for crd in generate::crds() {
        let expected = generate::to_yaml(&crd);
        for dir in ["crds/yaml", "charts/sapllm-operator/crds"] {
            let path = root.join(dir).join(generate::file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run `cargo run -p sapllm-crds --bin crdgen`", path.display())
            });
            assert!(
                committed == expected,
                "{} is stale: run `cargo run -p sapllm-crds --bin crdgen` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn every_schema_is_structural() {
    for crd in generate::crds() {
        let violations = structural_violations(&openapi_schema(&crd));
        assert!(
            violations.is_empty(),
            "{} is not structural:\n{}",
            crd.spec.names.kind,
            violations.join("\n")
        );
    }
}

#[test]
fn the_structural_check_catches_what_kubernetes_rejects() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "junctor": {"type": "object", "anyOf": [{"type": "string"}]},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
        }
    });
    let v = structural_violations(&bad);
    assert!(v.iter().any(|e| e.starts_with(".untyped: no type")), "{v:?}");
    assert!(v.iter().any(|e| e.contains(".junctor.anyOf[0]: `type` inside")), "{v:?}");
    assert!(v.iter().any(|e| e.contains(".both: both properties")), "{v:?}");
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                // apiVersion/kind/metadata are Kubernetes' own and documented by the server.
                let own = !matches!(p.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if own && child.get("description").and_then(|d| d.as_str()).is_none_or(str::is_empty) {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for crd in generate::crds() {
        let mut missing = Vec::new();
        walk(&openapi_schema(&crd), "", &mut missing);
        assert!(missing.is_empty(), "{}: fields without a description: {missing:?}", crd.spec.names.kind);
    }
}

#[test]
fn conditions_are_list_maps_keyed_by_type() {
    for crd in generate::crds() {
        let schema = openapi_schema(&crd);
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{}", crd.spec.names.kind);
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    }
}

/// Short names of Kubernetes' built-in resources (`kubectl api-resources`, 1.33) and of widely
/// installed CRDs. kubectl resolves a short name to one resource: a collision makes
/// `kubectl get <ours>` list someone else's objects (as `ev`, the short name of Events, did).
const TAKEN_SHORT_NAMES: &[&str] = &[
    // Kubernetes
    "cm", "cs", "csr", "crd", "crds", "cj", "deploy", "ds", "ep", "ev", "hpa", "ing", "limits", "netpol",
    "no", "ns", "pc", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc", "vac",
    // Tekton
    "tr", "trs", "pr", "prs", "tk", "ct", // Argo CD / Workflows / Rollouts / Events
    "app", "apps", "appproj", "appset", "wf", "cwf", "wftmpl", "cwftmpl", "ro", "eb", "es", "sn",
    // cert-manager
    "cert", "certs", "cr", "crs", "iss", "ciss", // Istio
    "vs", "dr", "gw", "se", "pa", "ra", "ap", "wle", // Knative, KServe
    "ksvc", "kpa", "rt", "cfg", "rev", "isvc", "tm", "ig", // Flux
    "ks", "hr", "gitrepo", "helmrepo", "hc", "ocirepo",
    // Prometheus Operator, KEDA, Volcano, VPA, Velero, Crossplane
    "prom", "smon", "pmon", "am", "promrule", "so", "sj", "ta", "cta", "vcjob", "pg", "vpa",
];

#[test]
fn short_names_collide_with_no_built_in_or_widely_installed_resource() {
    for crd in generate::crds() {
        for short in crd.spec.names.short_names.iter().flatten() {
            assert!(
                !TAKEN_SHORT_NAMES.contains(&short.as_str()),
                "{}: short name {short} is taken",
                crd.spec.names.kind
            );
        }
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["sapllm".to_string()][..]),
            "`kubectl get sapllm` lists all three"
        );
    }
}

#[test]
fn names_scope_and_status_subresource() {
    let expected = [("TrainingRun", "sltr"), ("Evaluation", "slev"), ("RoutingEndpoint", "slrep")];
    for (crd, (kind, short)) in generate::crds().iter().zip(expected) {
        assert_eq!(crd.spec.group, "sapllm.io");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_string()][..]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{kind} lacks /status");
        let columns: Vec<&str> =
            v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert!(columns.contains(&"Age"), "{kind}: {columns:?}");
    }
}
