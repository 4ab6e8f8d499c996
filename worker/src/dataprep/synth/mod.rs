//! The synthetic transaction-log generator: seeded and deterministic per record index (record i
//! depends only on the seed and i, so generation parallelises and a second pass regenerates the
//! same records instead of keeping them in memory).
//!
//! Each record: pick a type by the configured mix; build a clean document (the hard variant with
//! probability `ambiguous_rate`); maybe drop a business-mandatory fact (`incomplete_rate`); render
//! it with extraction noise; parse the noisy JSON back and route it with the reference router, so
//! the log's outcome agrees with what data-prep will derive; then simulate what happened: posted,
//! rejected by SAP with a realistic error (`error_rate`), misrouted and corrected by a clerk, or
//! sent to exception handling. A share (`duplicate_rate`) are resubmissions of an earlier record:
//! the same business document, new id, new noise (near-duplicates for the split grouping).

mod docs;
pub mod key_style;
mod noise;
pub mod world;

use chrono::NaiveDate;
use rand::Rng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};

use super::config::DataPrepConfig;
use super::log::TransactionLog;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::{AdcDocument, DocType};
use sapllm_sap::exceptions::scenarios::{self, Scenario};
use sapllm_sap::routing;
use sapllm_sap::rules::RuleContext;
use world::{World, rng_for};

/// Business-mandatory facts an extraction can miss, per type (extraction keys).
fn mandatory_keys(t: DocType) -> &'static [&'static str] {
    match t {
        DocType::PurchaseOrder => &["company_code", "supplier_id", "currency", "purchasing_group"],
        DocType::SupplierInvoice | DocType::SupplierCreditMemo => {
            &["company_code", "supplier_id", "currency", "gross_amount"]
        }
        DocType::SalesOrder => &["sold_to", "sales_org", "distribution_channel"],
        DocType::GoodsReceipt => &["po_number"],
        DocType::OutboundDelivery => &["shipping_point", "sales_order"],
        DocType::InboundDelivery => &["supplier_id", "delivery_date", "po_number"],
        DocType::SupplierMaster => &["category", "reconciliation_account"],
        DocType::SalesQuotation => &["sold_to", "valid_to"],
        DocType::CustomerReturn => &["return_reason", "sold_to"],
    }
}

/// Generates transaction logs.
pub struct Generator {
    world: World,
    seed: u64,
    today: NaiveDate,
    cumulative: Vec<(DocType, f64)>,
    error_rate: f64,
    ambiguous_rate: f64,
    incomplete_rate: f64,
    duplicate_rate: f64,
    key_variant_rate: f64,
    catalog: Catalog,
}

/// What one synthetic record is (for tests and the card).
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    pub log: TransactionLog,
    /// The parsed (noisy) document, as data-prep will read it.
    pub doc: AdcDocument,
    /// The reference routing of `doc` the outcome was simulated from.
    pub decision: routing::RoutingDecision,
    pub variant: &'static str,
    /// Index of the record this one resubmits.
    pub duplicate_of: Option<u64>,
}

impl Generator {
    pub fn new(cfg: &DataPrepConfig) -> Generator {
        let mix = cfg.mix();
        let total: f64 = mix.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        let cumulative = mix
            .iter()
            .map(|(t, w)| {
                acc += w / total;
                (*t, acc)
            })
            .collect();
        Generator {
            world: World::new(cfg.seed),
            seed: cfg.seed,
            today: cfg.today,
            cumulative,
            error_rate: cfg.error_rate,
            ambiguous_rate: cfg.ambiguous_rate,
            incomplete_rate: cfg.incomplete_rate,
            duplicate_rate: cfg.duplicate_rate,
            key_variant_rate: cfg.key_variant_rate,
            catalog: cfg.catalog.clone(),
        }
    }

    /// Record `index` (deterministic).
    pub fn log(&self, index: u64) -> TransactionLog {
        self.record(index).log
    }

    /// Record `index` with its generation facts.
    pub fn record(&self, index: u64) -> Synthetic {
        let mut r = rng_for(self.seed, 1, index);
        let duplicate_of = (index > 0 && r.random_bool(self.duplicate_rate))
            .then(|| index - r.random_range(1..=index.min(500)));
        // A resubmission re-renders the base record's document with fresh noise.
        let base = duplicate_of.unwrap_or(index);
        let mut br = rng_for(self.seed, 2, base);
        let t = self.pick_type(br.random());
        let ambiguous = br.random_bool(self.ambiguous_rate);
        let incomplete = br.random_bool(self.incomplete_rate);
        let ctx = docs::Ctx { world: &self.world, seed: self.seed, today: self.today };
        let g = docs::generate(&ctx, t, &mut br, ambiguous);
        let mut adc = g.doc.to_value();
        if incomplete {
            let keys = mandatory_keys(t);
            let k = keys[br.random_range(0..keys.len())];
            adc.as_object_mut().map(|o| o.remove(k));
        }
        let mut nr = rng_for(self.seed, 3, index);
        noise::apply(&mut adc, &mut nr, 1.0);
        let doc = AdcDocument::from_json(t, &adc).expect("generated documents parse back after noise");
        let mut kr = rng_for(self.seed, 4, index);
        if kr.random_bool(self.key_variant_rate) {
            let style = key_style::KeyStyle::SEEN[kr.random_range(0..key_style::KeyStyle::SEEN.len())];
            adc = key_style::respell(&self.catalog, t, &adc, style, &mut kr).0;
        }
        let (log, decision) =
            self.outcome(index, t, adc, &doc, g.references, duplicate_of.is_some(), &mut nr);
        Synthetic {
            log,
            doc,
            decision,
            variant: if incomplete { "incomplete" } else { g.variant },
            duplicate_of,
        }
    }

    fn pick_type(&self, u: f64) -> DocType {
        self.cumulative.iter().find(|(_, c)| u < *c).or(self.cumulative.last()).expect("mix is not empty").0
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &self,
        index: u64,
        t: DocType,
        adc: Value,
        doc: &AdcDocument,
        references: Vec<sapllm_sap::rules::ReferenceLine>,
        resubmission: bool,
        r: &mut SmallRng,
    ) -> (TransactionLog, routing::RoutingDecision) {
        let ctx = RuleContext { today: Some(self.today), references: &references, ..Default::default() };
        let decision = routing::route(&self.catalog, doc, &ctx);
        let mut log = TransactionLog {
            document_id: format!("ADC-{:08X}-{index:07}", self.seed as u32),
            document_type: t.as_str().into(),
            extracted_data: adc,
            routed_endpoint: Some(decision.endpoint.clone()),
            sap_payload: decision.payload.clone(),
            success: true,
            feedback: Value::Null,
            reference_lines: references,
            processed_at: Some(self.today.to_string()),
        };
        if decision.is_exception() {
            let reasons: Vec<String> = decision.blocking().map(|o| o.message.clone()).collect();
            log.sap_payload = None;
            log.feedback = json!({"note": "sent to exception handling", "reasons": reasons});
            return (log, decision);
        }
        let payload = decision.payload.clone().unwrap_or(Value::Null);
        let api = decision.api.clone().unwrap_or_default();
        // A resubmitted invoice is what SAP's duplicate check exists for.
        if resubmission && t == DocType::SupplierInvoice {
            let g = scenarios::generate(Scenario::DuplicateInvoice, &payload, self.today, r);
            return (self.failed(log, g.request, &g.failure), decision);
        }
        if !r.random_bool(self.error_rate) {
            log.feedback =
                json!({"sap_document": format!("{}", 5_100_000_000u64 + r.random_range(0..99_999_999u64))});
            return (log, decision);
        }
        if r.random_bool(0.3) {
            // Misrouted to a plausible neighbour and corrected by a clerk.
            let wrong: Vec<String> = self
                .catalog
                .candidates_for(t.as_str())
                .iter()
                .map(|a| a.endpoint())
                .filter(|e| *e != decision.endpoint)
                .collect();
            if !wrong.is_empty() {
                let w = wrong[r.random_range(0..wrong.len())].clone();
                log.routed_endpoint = Some(w.clone());
                log.sap_payload = None;
                log.success = false;
                log.feedback = json!({"correct_endpoint": decision.endpoint, "note": format!("routed to {w} by mistake; corrected by a clerk")});
                return (log, decision);
            }
        }
        let options = scenarios::applicable(&api, &payload);
        let s = options[r.random_range(0..options.len())];
        let g = scenarios::generate(s, &payload, self.today, r);
        (self.failed(log, g.request, &g.failure), decision)
    }

    fn failed(
        &self,
        mut log: TransactionLog,
        request: Value,
        failure: &sapllm_sap::exceptions::SapFailure,
    ) -> TransactionLog {
        log.sap_payload = Some(request);
        log.success = false;
        log.feedback = serde_json::to_value(failure).expect("failure serialises");
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_seed_dependent() {
        let cfg = DataPrepConfig::default();
        let g = Generator::new(&cfg);
        assert_eq!(g.log(17), g.log(17));
        let other = Generator::new(&DataPrepConfig { seed: 7, ..DataPrepConfig::default() });
        assert_ne!(g.log(17).extracted_data, other.log(17).extracted_data);
    }

    #[test]
    fn noisy_documents_route_like_their_clean_form() {
        // Noise must not change meaning: every record's noisy JSON parses and routes to the same
        // endpoint the generator logged (misroutes aside).
        let cfg = DataPrepConfig { error_rate: 0.0, ..DataPrepConfig::default() };
        let g = Generator::new(&cfg);
        let mut exceptions = 0;
        for i in 0..300 {
            let rec = g.record(i);
            let t: DocType = rec.log.document_type.parse().unwrap();
            let doc = AdcDocument::from_json(t, &cfg.catalog.normalize(t, &rec.log.extracted_data).document)
                .unwrap();
            let ctx = RuleContext {
                today: Some(cfg.today),
                references: &rec.log.reference_lines,
                ..Default::default()
            };
            let d = routing::route(&cfg.catalog, &doc, &ctx);
            assert_eq!(Some(d.endpoint.clone()), rec.log.routed_endpoint, "record {i} ({})", rec.variant);
            if d.is_exception() {
                exceptions += 1;
                assert_eq!(
                    rec.variant,
                    "incomplete",
                    "only incomplete documents go to exceptions: {:?}",
                    d.blocking().collect::<Vec<_>>()
                );
            }
        }
        assert!(exceptions > 0, "incomplete documents exist at the default rate");
    }
}
