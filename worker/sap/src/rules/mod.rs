//! The business-rule validator. One function, [`validate`], checks a create payload (built by
//! [`crate::payload::build_payload`] or written by the model) against the catalog and SAP's
//! business rules; data-prep, evaluation and the PPO reward all call it, so "a rule failed" means
//! the same thing everywhere.
//!
//! Rules (ids are stable): `required_field`, `required_items`, `unknown_field`, `max_length`,
//! `decimal_precision`, `date_format`, `item_number_format`, `currency_code`, `date_sanity`,
//! `invoice_balance`, `po_reference_quantity`, `positive_amounts`, `three_way_match_price`,
//! `three_way_match_quantity`, `duplicate_invoice`, `goods_movement`.

mod check;
mod currency;
mod documents;
mod schema;

use std::collections::HashSet;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::ApiSpec;

pub use check::{PayloadCheck, check_payload};
pub use currency::is_iso_currency;
pub use documents::duplicate_key;

/// How bad a failed rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// SAP rejects the request (or must not receive it): the document goes to exception handling.
    Error,
    /// SAP accepts but blocks or flags it (e.g. price variance -> payment block).
    Warning,
}

/// The result of one rule check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleOutcome {
    pub rule_id: String,
    pub severity: Severity,
    pub passed: bool,
    /// The payload property the rule looked at (`to_PurchaseOrderItem[1].Plant`).
    pub field: String,
    pub message: String,
}

impl RuleOutcome {
    fn new(
        rule_id: &str,
        severity: Severity,
        passed: bool,
        field: impl Into<String>,
        message: String,
    ) -> Self {
        RuleOutcome { rule_id: rule_id.into(), severity, passed, field: field.into(), message }
    }

    /// A failed check of severity [`Severity::Error`].
    pub fn is_blocking(&self) -> bool {
        !self.passed && self.severity == Severity::Error
    }
}

/// SAP tolerance keys for invoice verification: PP (price variance), DQ (quantity over goods
/// received), BD (small differences, the invoice balance). Each has an absolute and a percentage
/// limit; a variance passes only within both (SAP blocks the invoice when either is exceeded).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerances {
    pub price_pct: f64,
    pub price_abs: f64,
    pub quantity_pct: f64,
    pub quantity_abs: f64,
    pub small_difference_abs: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            price_pct: 5.0,
            price_abs: 50.0,
            quantity_pct: 2.0,
            quantity_abs: 1.0,
            small_difference_abs: 0.05,
        }
    }
}

/// A purchase order line an invoice refers to, with what was received against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLine {
    pub purchase_order: String,
    pub item: u32,
    pub unit_price: f64,
    pub ordered_quantity: f64,
    pub received_quantity: f64,
}

/// What the rules may know besides the payload.
#[derive(Debug, Clone, Default)]
pub struct RuleContext<'a> {
    /// The processing date: dates in the future or years back are suspicious.
    pub today: Option<NaiveDate>,
    pub tolerances: Tolerances,
    /// PO lines (and goods received) for the three-way match; empty = not checked.
    pub references: &'a [ReferenceLine],
    /// Duplicate keys ([`duplicate_key`]) of invoices already posted; `None` = not checked.
    pub posted_invoices: Option<&'a HashSet<String>>,
}

/// Checks `payload` as a create request to `api`. Every check performed yields an outcome,
/// passed or not, so callers can score the fraction passed; field-level format checks yield one
/// passing outcome per entity when all its fields pass, and one failing outcome per bad field.
pub fn validate(api: &ApiSpec, payload: &Value, ctx: &RuleContext) -> Vec<RuleOutcome> {
    let mut out = Vec::new();
    let Some(entity) = &api.create else {
        out.push(RuleOutcome::new(
            "read_only_api",
            Severity::Error,
            false,
            api.name.clone(),
            format!(
                "{} is read-only: it has no creatable entity set, so nothing can be posted to it",
                api.name
            ),
        ));
        return out;
    };
    if !payload.is_object() {
        out.push(RuleOutcome::new(
            "required_field",
            Severity::Error,
            false,
            entity.entity_set.clone(),
            format!(
                "the body of a create to {} must be a JSON object (the entity itself)",
                entity.entity_set
            ),
        ));
        return out;
    }
    schema::check_entity(entity, payload, "", None, &mut out);
    documents::check(api, payload, ctx, &mut out);
    out
}

/// The fraction of outcomes that passed (1.0 when none), as the PPO reward's rule term uses it.
pub fn pass_rate(outcomes: &[RuleOutcome]) -> f64 {
    if outcomes.is_empty() {
        return 1.0;
    }
    outcomes.iter().filter(|o| o.passed).count() as f64 / outcomes.len() as f64
}
