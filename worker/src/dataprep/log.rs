//! Transaction logs: one JSON object per line, as the routing system records each processed
//! document. Malformed lines are reported with their line number and field; the caller decides
//! whether to skip them (`--skip-invalid`) or fail.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use sapllm_sap::documents::normalize::normalize;
use sapllm_sap::documents::{AdcDocument, DocType, LooseDate};
use sapllm_sap::rules::ReferenceLine;

/// One processed document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionLog {
    pub document_id: String,
    /// A [`DocType`] name.
    pub document_type: String,
    /// The extraction output (ADC JSON).
    pub extracted_data: Value,
    /// `API_NAME/EntitySet` it was sent to, or `EXCEPTION_HANDLING`; absent when not routed.
    #[serde(default)]
    pub routed_endpoint: Option<String>,
    /// The body that was sent.
    #[serde(default)]
    pub sap_payload: Option<Value>,
    pub success: bool,
    /// On failure: SAP's error (`{"http_status":400,"error":{...}}`), or a correction by a person
    /// (`{"correct_endpoint": "...", "note": "..."}`); free text is kept as is.
    #[serde(default)]
    pub feedback: Value,
    /// Optional: PO lines and quantities received, for the three-way match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_lines: Vec<ReferenceLine>,
    /// Optional: processing date (ISO); date sanity rules use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
}

/// A malformed log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}: field {field}: {message}")]
pub struct LogError {
    pub line: u64,
    pub field: String,
    pub message: String,
}

/// A log line that passed validation.
#[derive(Debug, Clone)]
pub struct ValidRecord {
    pub line: u64,
    pub log: TransactionLog,
    pub doc_type: DocType,
    pub doc: AdcDocument,
    pub processed_at: Option<NaiveDate>,
}

/// Parses and validates one line. `line` is 1-based, for messages.
pub fn parse_line(line: u64, text: &str) -> Result<ValidRecord, LogError> {
    let err = |field: &str, message: String| LogError { line, field: field.into(), message };
    let log: TransactionLog = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." { missing_field(&inner.to_string()).unwrap_or("(line)").to_string() } else { path };
        err(&field, format!("{inner}; each line must be one JSON object with document_id, document_type, extracted_data, success"))
    })?;
    validate(line, log)
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

/// Validates a parsed log record (also used for synthetic logs).
pub fn validate(line: u64, log: TransactionLog) -> Result<ValidRecord, LogError> {
    let err = |field: &str, message: String| LogError { line, field: field.into(), message };
    if log.document_id.trim().is_empty() {
        return Err(err("document_id", "is empty; every document needs a unique id".into()));
    }
    let doc_type: DocType = log.document_type.parse().map_err(|m| err("document_type", m))?;
    // Keys as the extraction system wrote them (built-in aliases); errors name the key as sent.
    let normalized = normalize(doc_type, &log.extracted_data, &[]);
    let doc = AdcDocument::from_json(doc_type, &normalized.document)
        .map_err(|e| err(&format!("extracted_data.{}", normalized.origin(&e.path)), e.message))?;
    if log.success && log.routed_endpoint.as_deref().is_none_or(str::is_empty) {
        return Err(err(
            "routed_endpoint",
            "is missing but success is true: a successful case must say where it went".into(),
        ));
    }
    if let Some(p) = &log.sap_payload
        && !p.is_object()
        && !p.is_null()
    {
        return Err(err("sap_payload", format!("must be the JSON object that was sent, got {p}")));
    }
    let processed_at = match &log.processed_at {
        None => None,
        Some(s) => Some(
            LooseDate::parse(s)
                .map(|d| d.0)
                .ok_or_else(|| err("processed_at", format!("{s:?} is not a date (write 2025-06-16)")))?,
        ),
    };
    Ok(ValidRecord { line, log, doc_type, doc, processed_at })
}

/// Reads a JSONL log in chunks of lines (for bounded memory and parallel parsing).
pub struct LogReader {
    reader: BufReader<File>,
    line: u64,
    path: String,
}

impl LogReader {
    pub fn open(path: &Path) -> std::io::Result<LogReader> {
        Ok(LogReader {
            reader: BufReader::with_capacity(1 << 20, File::open(path)?),
            line: 0,
            path: path.display().to_string(),
        })
    }

    /// The next up to `n` non-blank lines with their 1-based line numbers; empty at end of file.
    pub fn next_chunk(&mut self, n: usize) -> Result<Vec<(u64, String)>, String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut buf = String::new();
            let read = self
                .reader
                .read_line(&mut buf)
                .map_err(|e| format!("{}: line {}: {e}", self.path, self.line + 1))?;
            if read == 0 {
                break;
            }
            self.line += 1;
            if !buf.trim().is_empty() {
                out.push((self.line, buf));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_line_and_field() {
        let e = parse_line(
            7,
            r#"{"document_id":"D1","document_type":"invoice","extracted_data":{},"success":false}"#,
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (7, "document_type"));
        assert!(e.message.contains("supplier_invoice"), "{e}");

        let e = parse_line(3, r#"{"document_id":"D1","document_type":"supplier_invoice","success":true}"#)
            .unwrap_err();
        assert_eq!(e.field, "extracted_data", "{e}");

        let e = parse_line(
            9,
            r#"{"document_id":"D1","document_type":"supplier_invoice","extracted_data":{"gross_amount":"much"},"success":false}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "extracted_data.gross_amount", "{e}");

        let e = parse_line(2, "{not json").unwrap_err();
        assert_eq!(e.line, 2);

        let e = parse_line(
            4,
            r#"{"document_id":"D1","document_type":"purchase_order","extracted_data":{},"success":true}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "routed_endpoint");
    }
}
