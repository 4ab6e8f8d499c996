//! Transaction logs: one JSON object per line, as the routing system records each processed
//! document. Malformed lines are reported with their line number and field; the caller decides
//! whether to skip them (`--skip-invalid`) or fail.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
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

/// Reads a JSONL log in chunks of lines (for bounded memory and parallel parsing). The log is a
/// file, or a folder whose `*.jsonl` files are read in name order as one log (what a
/// RoutingEndpoint's feedback writes: one `feedback-<pod>.jsonl` per replica); line numbers then
/// count across the files, and a read error names the file. Only the bytes present at the
/// [`LogReader::snapshot`] are read, up to the last complete line, so both passes of data-prep
/// see the same records while serving pods keep appending.
pub struct LogReader {
    reader: BufReader<std::io::Take<File>>,
    line: u64,
    path: String,
    /// Bytes of the current file in the snapshot.
    len: u64,
    /// Files still to read after the current one, with the bytes to read of each.
    rest: std::collections::VecDeque<(std::path::PathBuf, u64)>,
}

/// The files a log path stands for: itself, or a folder's `*.jsonl` files in name order.
pub fn log_files(path: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "jsonl") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is a folder without *.jsonl files", path.display()),
        ));
    }
    Ok(files)
}

impl LogReader {
    /// The files of a log path with their current sizes.
    pub fn snapshot(path: &Path) -> std::io::Result<Vec<(std::path::PathBuf, u64)>> {
        log_files(path)?
            .into_iter()
            .map(|f| {
                let len = std::fs::metadata(&f)?.len();
                Ok((f, len))
            })
            .collect()
    }

    pub fn open(path: &Path) -> std::io::Result<LogReader> {
        LogReader::from_snapshot(LogReader::snapshot(path)?)
    }

    /// Reads the files of a [`LogReader::snapshot`], each up to its size then.
    pub fn from_snapshot(files: Vec<(std::path::PathBuf, u64)>) -> std::io::Result<LogReader> {
        let mut rest: std::collections::VecDeque<_> = files.into();
        let (first, len) = rest.pop_front().ok_or_else(|| std::io::Error::other("no log files"))?;
        Ok(LogReader {
            reader: BufReader::with_capacity(1 << 20, File::open(&first)?.take(len)),
            line: 0,
            path: first.display().to_string(),
            len,
            rest,
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
            // A last line without its newline where the snapshot ends while the file has grown
            // since: a line being written, read next time whole.
            let cut = read > 0
                && !buf.ends_with('\n')
                && self.reader.get_ref().limit() == 0
                && self.reader.get_ref().get_ref().metadata().is_ok_and(|m| m.len() > self.len);
            if read == 0 || cut {
                // The next file of a folder, if any.
                let Some((next, len)) = self.rest.pop_front() else { break };
                let file = File::open(&next).map_err(|e| format!("{}: {e}", next.display()))?;
                self.reader = BufReader::with_capacity(1 << 20, file.take(len));
                self.path = next.display().to_string();
                self.len = len;
                continue;
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

    #[test]
    fn a_folder_is_read_as_its_jsonl_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("sapllm-log-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("feedback-b.jsonl"), "b1\n\nb2\n").unwrap();
        std::fs::write(dir.join("feedback-a.jsonl"), "a1\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "skip me\n").unwrap();
        let mut r = LogReader::open(&dir).unwrap();
        let all = r.next_chunk(10).unwrap();
        let texts: Vec<&str> = all.iter().map(|(_, l)| l.trim()).collect();
        assert_eq!(texts, ["a1", "b1", "b2"]);
        assert_eq!(all.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 4]);
        assert!(r.next_chunk(10).unwrap().is_empty());
        // Appended after the snapshot (a line still being written, then more): not read.
        let snap = LogReader::snapshot(&dir).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("feedback-a.jsonl")).unwrap();
        std::io::Write::write_all(&mut f, b"a2").unwrap();
        let cut = LogReader::snapshot(&dir).unwrap();
        std::io::Write::write_all(&mut f, b"-end\na3\n").unwrap();
        for s in [snap, cut] {
            let lines = LogReader::from_snapshot(s).unwrap().next_chunk(10).unwrap();
            let texts: Vec<&str> = lines.iter().map(|(_, l)| l.trim()).collect();
            assert_eq!(texts, ["a1", "b1", "b2"]);
        }
        // A last line without a newline in a file nobody writes is a whole line.
        std::fs::write(dir.join("feedback-c.jsonl"), "c1").unwrap();
        let lines = LogReader::open(&dir).unwrap().next_chunk(10).unwrap();
        assert_eq!(lines.last().unwrap().1, "c1");
        std::fs::remove_file(dir.join("feedback-c.jsonl")).unwrap();
        std::fs::remove_file(dir.join("feedback-a.jsonl")).unwrap();
        std::fs::remove_file(dir.join("feedback-b.jsonl")).unwrap();
        assert!(LogReader::open(&dir).is_err(), "a folder without logs is an error");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
