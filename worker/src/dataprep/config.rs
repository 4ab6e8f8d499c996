//! Data-prep configuration.

use std::path::PathBuf;

use chrono::NaiveDate;

use crate::progress::ProgressMode;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;

/// Where the transaction logs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The seeded synthetic generator.
    Synthetic,
    /// A JSONL transaction log (see `dataprep/README.md` for the record format).
    LogFile(PathBuf),
}

/// Fractions of documents per split (they must sum to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    pub train: f64,
    pub val: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions { train: 0.8, val: 0.1, test: 0.1 }
    }
}

/// Everything `data-prep` needs.
#[derive(Debug, Clone)]
pub struct DataPrepConfig {
    pub source: Source,
    /// Number of synthetic logs to generate (ignored for a log file).
    pub examples: usize,
    pub seed: u64,
    pub split: SplitFractions,
    /// Similar past cases per example.
    pub k_similar: usize,
    /// Skip malformed log lines (counted in the card) instead of failing.
    pub skip_invalid: bool,
    pub output_dir: PathBuf,
    /// Relative weights of document types in synthetic data (empty = the default mix).
    pub doc_mix: Vec<(DocType, f64)>,
    /// Share of synthetic posts that SAP rejects or that were misrouted.
    pub error_rate: f64,
    /// Share of synthetic documents built as ambiguous cases (invoice without PO reference,
    /// credit memo titled "Invoice", price variance).
    pub ambiguous_rate: f64,
    /// Share of synthetic documents missing business-mandatory data (exception handling).
    pub incomplete_rate: f64,
    /// Share of documents whose keys are respelled as extraction systems write them (camel,
    /// Pascal, aliases; [`super::synth::key_style`]); the rest keep the models' snake case.
    pub key_variant_rate: f64,
    /// Share of synthetic documents that are resubmissions of an earlier one (near-duplicates).
    pub duplicate_rate: f64,
    /// Processing date of synthetic logs (document dates lie before it).
    pub today: NaiveDate,
    pub catalog: Catalog,
    pub progress: ProgressMode,
}

impl Default for DataPrepConfig {
    fn default() -> Self {
        DataPrepConfig {
            source: Source::Synthetic,
            examples: 1000,
            seed: 42,
            split: SplitFractions::default(),
            k_similar: 3,
            skip_invalid: false,
            output_dir: PathBuf::from("data"),
            doc_mix: Vec::new(),
            error_rate: 0.1,
            ambiguous_rate: 0.15,
            incomplete_rate: 0.05,
            key_variant_rate: 0.4,
            duplicate_rate: 0.03,
            today: NaiveDate::from_ymd_opt(2025, 6, 16).expect("valid date"),
            catalog: Catalog::builtin(),
            progress: ProgressMode::Quiet,
        }
    }
}

impl DataPrepConfig {
    /// Rejects settings that cannot produce a dataset, naming the setting and the fix.
    pub fn check(&self) -> Result<(), String> {
        let s = self.split;
        if [s.train, s.val, s.test].iter().any(|f| !(0.0..=1.0).contains(f))
            || (s.train + s.val + s.test - 1.0).abs() > 1e-6
        {
            return Err(format!(
                "split fractions train={} val={} test={} must each be in [0,1] and sum to 1",
                s.train, s.val, s.test
            ));
        }
        if s.train <= 0.0 {
            return Err(
                "split train fraction must be > 0: similar cases are retrieved from the train split".into()
            );
        }
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("ambiguous_rate", self.ambiguous_rate),
            ("incomplete_rate", self.incomplete_rate),
            ("key_variant_rate", self.key_variant_rate),
            ("duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} = {v} must be between 0 and 1"));
            }
        }
        if self.doc_mix.iter().any(|(_, w)| w.is_nan() || *w < 0.0)
            || (!self.doc_mix.is_empty() && self.doc_mix.iter().all(|(_, w)| *w == 0.0))
        {
            return Err(
                "doc_mix weights must be >= 0 and not all 0 (e.g. supplier_invoice=3,purchase_order=1)"
                    .into(),
            );
        }
        if self.source == Source::Synthetic && self.examples == 0 {
            return Err("examples must be > 0 for synthetic data".into());
        }
        Ok(())
    }

    /// The document-type weights in effect (the default reflects an AP-heavy inbox).
    pub fn mix(&self) -> Vec<(DocType, f64)> {
        if !self.doc_mix.is_empty() {
            return self.doc_mix.clone();
        }
        vec![
            (DocType::SupplierInvoice, 0.26),
            (DocType::SupplierCreditMemo, 0.06),
            (DocType::PurchaseOrder, 0.12),
            (DocType::SalesOrder, 0.12),
            (DocType::GoodsReceipt, 0.12),
            (DocType::InboundDelivery, 0.07),
            (DocType::OutboundDelivery, 0.07),
            (DocType::SalesQuotation, 0.06),
            (DocType::CustomerReturn, 0.06),
            (DocType::SupplierMaster, 0.06),
        ]
    }
}
