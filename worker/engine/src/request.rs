//! The wire form of requests (CLI input files and the HTTP API): like the query types, but
//! `api_schemas` may be left out (the catalog's candidates for the document type are used) and
//! every problem is reported with the field it concerns, so a client can fix its input.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{ExceptionQuery, RoutingQuery, SimilarException};
use crate::examples::SimilarCase;
use sapllm_sap::catalog::{Catalog, CompactSchema, compact_schema};
use sapllm_sap::documents::DocType;
use sapllm_sap::exceptions::SapFailure;
use sapllm_sap::rules::RuleOutcome;

/// A request problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// Parses JSON text into `T`, naming the offending field (`api_schemas[0].endpoint`) on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.to_string();
            // serde reports a missing field at its parent; name the field itself.
            let field = match msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                Some(name) if path == "." => name.to_string(),
                Some(name) => format!("{path}.{name}"),
                None if inner.is_syntax() || inner.is_eof() => "body".to_string(),
                None => path,
            };
            Err(FieldError::new(field, msg))
        }
    }
}

/// `POST /v1/route` body (and `route FILE` input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    pub doc_type: String,
    pub adc_json: Value,
    #[serde(default)]
    pub api_schemas: Option<Vec<CompactSchema>>,
    #[serde(default)]
    pub similar_cases: Vec<SimilarCase>,
}

impl RouteRequest {
    /// Validates and fills in the candidates. `prefix` names the request inside a batch
    /// (`requests[3].`).
    pub fn into_query(self, catalog: &Catalog, prefix: &str) -> Result<RoutingQuery, FieldError> {
        // The type as users spell it (`PURCHASE_ORDER`, `Purchase Order`), canonical from here on.
        let doc_type = DocType::from_str(&self.doc_type)
            .map_err(|e| FieldError::new(format!("{prefix}doc_type"), e))?
            .as_str()
            .to_string();
        if !self.adc_json.is_object() {
            return Err(FieldError::new(
                format!("{prefix}adc_json"),
                "must be a JSON object (the extracted document)",
            ));
        }
        let api_schemas = match self.api_schemas {
            Some(s) => {
                if let Some(i) = s.iter().position(|c| c.endpoint.trim().is_empty()) {
                    return Err(FieldError::new(
                        format!("{prefix}api_schemas[{i}].endpoint"),
                        "must not be empty",
                    ));
                }
                s
            }
            None => catalog.candidates_for(&doc_type).into_iter().map(compact_schema).collect(),
        };
        Ok(RoutingQuery { adc_json: self.adc_json, doc_type, api_schemas, similar_cases: self.similar_cases })
    }
}

/// `POST /v1/route/batch` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteBatchRequest {
    pub requests: Vec<RouteRequest>,
}

/// `POST /v1/exceptions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionRequest {
    pub doc_type: String,
    #[serde(default)]
    pub adc_json: Value,
    pub endpoint: String,
    #[serde(default)]
    pub request_payload: Value,
    #[serde(default)]
    pub sap_error: Option<SapFailure>,
    #[serde(default)]
    pub rule_failures: Vec<RuleOutcome>,
    #[serde(default)]
    pub similar_exceptions: Vec<SimilarException>,
}

impl ExceptionRequest {
    pub fn into_query(self) -> Result<(ExceptionQuery, Vec<SimilarException>), FieldError> {
        let doc_type = DocType::from_str(&self.doc_type).map_err(|e| FieldError::new("doc_type", e))?;
        if self.endpoint.trim().is_empty() {
            return Err(FieldError::new("endpoint", "must not be empty"));
        }
        if self.sap_error.is_none() && self.rule_failures.is_empty() {
            return Err(FieldError::new(
                "sap_error",
                "give the SAP error or the failed rules (rule_failures)",
            ));
        }
        Ok((
            ExceptionQuery {
                doc_type: doc_type.as_str().to_string(),
                adc_json: self.adc_json,
                endpoint: self.endpoint,
                request_payload: self.request_payload,
                sap_error: self.sap_error,
                rule_failures: self.rule_failures,
            },
            self.similar_exceptions,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<RouteRequest>(br#"{"adc_json": {}}"#).unwrap_err();
        assert_eq!(e.field, "doc_type");
        let e = parse_json::<RouteRequest>(
            br#"{"doc_type": "purchase_order", "adc_json": {}, "api_schemas": [{"api": 1}]}"#,
        )
        .unwrap_err();
        assert!(e.field.starts_with("api_schemas[0]"), "{e}");
        let e = parse_json::<RouteRequest>(b"{not json").unwrap_err();
        assert_eq!(e.field, "body");
        let r = parse_json::<RouteRequest>(br#"{"doc_type": "memo", "adc_json": {}}"#).unwrap();
        assert_eq!(r.into_query(&Catalog::builtin(), "").unwrap_err().field, "doc_type");
    }

    #[test]
    fn candidates_default_to_the_catalog() {
        let r = RouteRequest {
            doc_type: "purchase_order".into(),
            adc_json: serde_json::json!({}),
            api_schemas: None,
            similar_cases: vec![],
        };
        let q = r.into_query(&Catalog::builtin(), "").unwrap();
        assert!(!q.api_schemas.is_empty());
    }

    #[test]
    fn document_types_are_read_as_users_spell_them() {
        for spelled in ["PURCHASE_ORDER", "Purchase Order", "purchase-order", "PurchaseOrder"] {
            let r = RouteRequest {
                doc_type: spelled.into(),
                adc_json: serde_json::json!({}),
                api_schemas: None,
                similar_cases: vec![],
            };
            let q = r.into_query(&Catalog::builtin(), "").unwrap();
            assert_eq!(q.doc_type, "purchase_order", "{spelled}");
            assert!(q.api_schemas.iter().any(|c| c.api == "API_PURCHASEORDER_PROCESS_SRV"), "{spelled}");
        }
    }
}
