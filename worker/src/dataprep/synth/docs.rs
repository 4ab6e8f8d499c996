//! Clean synthetic documents, one builder per type. `ambiguous` asks for the hard variant of a
//! type: an invoice without PO reference (G/L lines), an invoice whose price exceeds the PO
//! tolerance, a credit memo titled "Invoice" with negative amounts, a quotation without an RFQ
//! number, a return without a reference invoice.

use chrono::{Duration, NaiveDate};
use rand::Rng;
use rand::rngs::SmallRng;

use super::world::{COMPANIES, Order, World};
use sapllm_sap::documents::*;
use sapllm_sap::rules::ReferenceLine;

/// A generated document and what the rules need to know about it.
pub struct Generated {
    pub doc: AdcDocument,
    pub references: Vec<ReferenceLine>,
    /// Which variant was generated (for the card and tests).
    pub variant: &'static str,
}

pub struct Ctx<'a> {
    pub world: &'a World,
    pub seed: u64,
    pub today: NaiveDate,
}

fn s(v: impl Into<String>) -> Option<String> {
    Some(v.into())
}
fn amt(v: f64) -> Option<Amount> {
    Some(Amount((v * 100.0).round() / 100.0))
}
fn day(c: &Ctx, r: &mut SmallRng, back: std::ops::Range<i64>) -> Option<LooseDate> {
    Some(LooseDate(c.today - Duration::days(r.random_range(back))))
}
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub fn generate(c: &Ctx, t: DocType, r: &mut SmallRng, ambiguous: bool) -> Generated {
    match t {
        DocType::PurchaseOrder => purchase_order(c, r),
        DocType::SupplierInvoice => supplier_invoice(c, r, ambiguous),
        DocType::SupplierCreditMemo => credit_memo(c, r, ambiguous),
        DocType::SalesOrder => sales_order(c, r),
        DocType::GoodsReceipt => goods_receipt(c, r),
        DocType::OutboundDelivery => outbound_delivery(c, r),
        DocType::InboundDelivery => inbound_delivery(c, r),
        DocType::SupplierMaster => supplier_master(c, r),
        DocType::SalesQuotation => sales_quotation(c, r, ambiguous),
        DocType::CustomerReturn => customer_return(c, r, ambiguous),
    }
}

fn plain(doc: AdcDocument) -> Generated {
    Generated { doc, references: Vec::new(), variant: "standard" }
}

fn po(c: &Ctx, r: &mut SmallRng) -> Order {
    c.world.purchase_order(c.seed, r.random_range(0..400_000))
}

fn purchase_order(c: &Ctx, r: &mut SmallRng) -> Generated {
    let o = po(c, r);
    let sup = &c.world.suppliers[o.partner];
    let co = &COMPANIES[sup.company];
    let items = o
        .lines
        .iter()
        .map(|l| {
            let m = &c.world.materials[l.material];
            OrderItem {
                line_number: Some(l.item),
                material: s(&m.id),
                description: s(&m.description),
                quantity: Some(Amount(l.quantity)),
                unit: s(m.unit),
                unit_price: Some(Amount(l.price)),
                plant: s(co.code),
                storage_location: s(format!("{}A", &co.code[..3])),
                tax_code: s(co.taxes[0].0),
                delivery_date: Some(LooseDate(c.today + Duration::days(r.random_range(7..40)))),
                ..Default::default()
            }
        })
        .collect();
    plain(AdcDocument::PurchaseOrder(PurchaseOrder {
        document_title: s(["Purchase Order", "PURCHASE ORDER", "Bestellung"][r.random_range(0..3)]),
        po_number: s(&o.number),
        po_date: day(c, r, 0..20),
        company_code: s(co.code),
        supplier_id: s(&sup.id),
        supplier_name: s(&sup.name),
        purchasing_org: s(co.code),
        purchasing_group: s(&o.group),
        order_type: None,
        currency: s(co.currency),
        payment_terms: s(sup.payment_terms),
        incoterms: s(["EXW", "FCA", "DAP", "DDP"][r.random_range(0..4)]),
        items,
    }))
}

/// Invoice lines for a PO: quantities as received, prices as ordered (or over tolerance).
fn po_invoice_lines(
    c: &Ctx,
    o: &Order,
    r: &mut SmallRng,
    price_factor: f64,
    tax: &str,
) -> (Vec<InvoiceItem>, Vec<ReferenceLine>) {
    let mut items = Vec::new();
    let mut refs = Vec::new();
    for (i, l) in o.lines.iter().enumerate() {
        let m = &c.world.materials[l.material];
        let received = if r.random_bool(0.9) { l.quantity } else { (l.quantity * 0.5).floor().max(1.0) };
        let price = round2(l.price * price_factor);
        items.push(InvoiceItem {
            line_number: Some(i as u32 + 1),
            po_number: None,
            po_item: Some(l.item),
            material: s(&m.id),
            description: s(&m.description),
            quantity: Some(Amount(received)),
            unit: s(m.unit),
            unit_price: Some(Amount(price)),
            amount: amt(price * received),
            tax_code: s(tax),
            ..Default::default()
        });
        refs.push(ReferenceLine {
            purchase_order: o.number.clone(),
            item: l.item,
            unit_price: l.price,
            ordered_quantity: l.quantity,
            received_quantity: received,
        });
    }
    (items, refs)
}

fn gl_lines(r: &mut SmallRng, tax: &str) -> Vec<InvoiceItem> {
    const SERVICES: &[(&str, &str)] = &[
        ("61000000", "Consulting services"),
        ("62000000", "Electricity"),
        ("63000000", "Office rent"),
        ("65000000", "Travel expenses"),
        ("64000000", "Software subscription"),
    ];
    (0..r.random_range(1..=3))
        .map(|i| {
            let (gl, text) = SERVICES[r.random_range(0..SERVICES.len())];
            InvoiceItem {
                line_number: Some(i + 1),
                description: s(text),
                amount: amt(r.random_range(50.0..5000.0)),
                gl_account: s(gl),
                cost_center: s(format!("1010{:04}", r.random_range(1101..1199))),
                tax_code: s(tax),
                ..Default::default()
            }
        })
        .collect()
}

struct Totals {
    net: f64,
    tax: f64,
    gross: f64,
}

fn totals(items: &[InvoiceItem], rate: f64) -> Totals {
    let net = round2(items.iter().filter_map(|i| i.amount).map(|a| a.0).sum());
    let tax = round2(net * rate / 100.0);
    Totals { net, tax, gross: round2(net + tax) }
}

fn supplier_invoice(c: &Ctx, r: &mut SmallRng, ambiguous: bool) -> Generated {
    // One in three invoices has no PO (services, utilities); ambiguous cases are split between
    // "no PO reference" and "price over the PO tolerance".
    let variant = if ambiguous {
        if r.random_bool(0.5) { "no_po_reference" } else { "price_variance" }
    } else if r.random_bool(0.3) {
        "no_po_reference"
    } else {
        "po_reference"
    };
    let (sup_idx, items, refs, po_number) = if variant == "no_po_reference" {
        let sup = r.random_range(0..c.world.suppliers.len());
        let tax = COMPANIES[c.world.suppliers[sup].company].taxes[0].0;
        (sup, gl_lines(r, tax), Vec::new(), None)
    } else {
        let o = po(c, r);
        let tax = COMPANIES[c.world.suppliers[o.partner].company].taxes[0].0;
        let factor = if variant == "price_variance" { r.random_range(1.12..1.4) } else { 1.0 };
        let (items, refs) = po_invoice_lines(c, &o, r, factor, tax);
        (o.partner, items, refs, Some(o.number.clone()))
    };
    let sup = &c.world.suppliers[sup_idx];
    let co = &COMPANIES[sup.company];
    let (tax_code, rate) = co.taxes[0];
    let t = totals(&items, rate);
    let year = c.today.format("%Y");
    let number = match r.random_range(0..3) {
        0 => format!("INV-{year}-{:05}", r.random_range(1..99999)),
        1 => format!("RE{:08}", r.random_range(1..99_999_999)),
        _ => format!("{:06}", r.random_range(1..999_999)),
    };
    Generated {
        doc: AdcDocument::SupplierInvoice(SupplierInvoice {
            document_title: s(["Invoice", "INVOICE", "Rechnung", "Tax Invoice"][r.random_range(0..4)]),
            invoice_number: s(number),
            invoice_date: day(c, r, 1..45),
            posting_date: None,
            company_code: s(co.code),
            supplier_id: s(&sup.id),
            supplier_name: s(&sup.name),
            supplier_vat_id: s(&sup.vat),
            po_number,
            currency: s(co.currency),
            net_amount: amt(t.net),
            tax_amount: amt(t.tax),
            tax_code: s(tax_code),
            gross_amount: amt(t.gross),
            payment_terms: s(sup.payment_terms),
            items,
        }),
        references: refs,
        variant,
    }
}

fn credit_memo(c: &Ctx, r: &mut SmallRng, ambiguous: bool) -> Generated {
    let sup_idx = r.random_range(0..c.world.suppliers.len());
    let sup = &c.world.suppliers[sup_idx];
    let co = &COMPANIES[sup.company];
    let (tax_code, rate) = co.taxes[0];
    let mut items = gl_lines(r, tax_code);
    for it in &mut items {
        it.description = s(format!("Credit: {}", it.description.as_deref().unwrap_or("")));
    }
    let t = totals(&items, rate);
    // The hard variant: titled "Invoice", amounts printed negative.
    let sign = if ambiguous { -1.0 } else { 1.0 };
    if ambiguous {
        for it in &mut items {
            it.amount = it.amount.map(|a| Amount(-a.0));
        }
    }
    Generated {
        doc: AdcDocument::SupplierCreditMemo(SupplierCreditMemo {
            document_title: s(if ambiguous {
                ["Invoice", "INVOICE", "Rechnung"][r.random_range(0..3)]
            } else {
                ["Credit Note", "CREDIT MEMO", "Gutschrift"][r.random_range(0..3)]
            }),
            credit_memo_number: s(format!("CN-{:06}", r.random_range(1..999_999))),
            credit_memo_date: day(c, r, 1..45),
            posting_date: None,
            company_code: s(co.code),
            supplier_id: s(&sup.id),
            supplier_name: s(&sup.name),
            supplier_vat_id: s(&sup.vat),
            po_number: None,
            original_invoice_number: s(format!(
                "INV-{}-{:05}",
                c.today.format("%Y"),
                r.random_range(1..99999)
            )),
            credit_reason: s(["Price adjustment", "Damaged goods", "Volume rebate", "Returned goods"]
                [r.random_range(0..4)]),
            currency: s(co.currency),
            net_amount: amt(sign * t.net),
            tax_amount: amt(sign * t.tax),
            tax_code: s(tax_code),
            gross_amount: amt(sign * t.gross),
            items,
        }),
        references: Vec::new(),
        variant: if ambiguous { "titled_invoice_negative_amounts" } else { "credit_note" },
    }
}

fn order_items(c: &Ctx, r: &mut SmallRng) -> Vec<OrderItem> {
    (0..r.random_range(1..=5))
        .map(|i| {
            let m = &c.world.materials[r.random_range(0..c.world.materials.len())];
            OrderItem {
                line_number: Some((i + 1) * 10),
                material: s(&m.id),
                customer_material: r.random_bool(0.3).then(|| format!("C-{}", r.random_range(1000..9999))),
                description: s(&m.description),
                quantity: Some(Amount(r.random_range(1..100) as f64)),
                unit: s(m.unit),
                unit_price: Some(Amount(round2(m.price * 1.3))),
                ..Default::default()
            }
        })
        .collect()
}

fn sales_order(c: &Ctx, r: &mut SmallRng) -> Generated {
    let cu = &c.world.customers[r.random_range(0..c.world.customers.len())];
    let co = &COMPANIES[cu.company];
    plain(AdcDocument::SalesOrder(SalesOrder {
        document_title: s(["Purchase Order", "Customer Order", "Order"][r.random_range(0..3)]),
        customer_po_number: s(format!("PO-{}", r.random_range(10000..999_999))),
        customer_po_date: day(c, r, 0..10),
        sold_to: s(&cu.id),
        ship_to: s(&cu.id),
        customer_name: s(&cu.name),
        sales_org: s(co.code),
        distribution_channel: s("10"),
        division: s("00"),
        order_type: None,
        currency: s(co.currency),
        requested_delivery_date: Some(LooseDate(c.today + Duration::days(r.random_range(5..30)))),
        payment_terms: s(cu.payment_terms),
        items: order_items(c, r),
    }))
}

fn sales_quotation(c: &Ctx, r: &mut SmallRng, ambiguous: bool) -> Generated {
    let cu = &c.world.customers[r.random_range(0..c.world.customers.len())];
    let co = &COMPANIES[cu.company];
    let from = c.today - Duration::days(r.random_range(0..10));
    let mut g = plain(AdcDocument::SalesQuotation(SalesQuotation {
        document_title: s(["Request for Quotation", "RFQ", "Quotation request"][r.random_range(0..3)]),
        rfq_number: (!ambiguous).then(|| format!("RFQ-{}", r.random_range(1000..99999))),
        quotation_date: Some(LooseDate(from)),
        valid_from: Some(LooseDate(from)),
        valid_to: Some(LooseDate(from + Duration::days(r.random_range(14..90)))),
        sold_to: s(&cu.id),
        customer_name: s(&cu.name),
        sales_org: s(co.code),
        distribution_channel: s("10"),
        division: s("00"),
        currency: s(co.currency),
        items: order_items(c, r),
    }));
    if ambiguous {
        g.variant = "no_rfq_number";
    }
    g
}

fn customer_return(c: &Ctx, r: &mut SmallRng, ambiguous: bool) -> Generated {
    let cu = &c.world.customers[r.random_range(0..c.world.customers.len())];
    let co = &COMPANIES[cu.company];
    let reason = ["001", "002", "005", "101"][r.random_range(0..4)];
    let mut items = order_items(c, r);
    for (i, it) in items.iter_mut().enumerate() {
        it.return_reason = s(reason);
        it.reference_item = (!ambiguous).then_some((i as u32 + 1) * 10);
        it.unit_price = None;
    }
    let mut g = plain(AdcDocument::CustomerReturn(CustomerReturn {
        document_title: s(["Return Request", "RMA", "Returns Authorization"][r.random_range(0..3)]),
        rma_number: s(format!("RMA-{}", r.random_range(10000..99999))),
        return_date: day(c, r, 0..15),
        sold_to: s(&cu.id),
        customer_name: s(&cu.name),
        sales_org: s(co.code),
        distribution_channel: s("10"),
        division: s("00"),
        reference_invoice: (!ambiguous).then(|| (90_000_000 + r.random_range(0..999_999u32)).to_string()),
        return_reason: s(reason),
        currency: s(co.currency),
        items,
    }));
    if ambiguous {
        g.variant = "no_reference_invoice";
    }
    g
}

fn delivery_items(c: &Ctx, o: &Order, r: &mut SmallRng, plant: &str) -> Vec<DeliveryItem> {
    o.lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let m = &c.world.materials[l.material];
            DeliveryItem {
                line_number: Some(i as u32 + 1),
                reference_document: None,
                reference_item: Some(l.item),
                material: s(&m.id),
                description: s(&m.description),
                quantity: Some(Amount(if r.random_bool(0.85) {
                    l.quantity
                } else {
                    (l.quantity / 2.0).ceil()
                })),
                unit: s(m.unit),
                plant: s(plant),
                storage_location: s(format!("{}A", &plant[..3])),
                batch: r.random_bool(0.2).then(|| format!("B{:07}", r.random_range(1..9_999_999))),
            }
        })
        .collect()
}

fn goods_receipt(c: &Ctx, r: &mut SmallRng) -> Generated {
    let o = po(c, r);
    let sup = &c.world.suppliers[o.partner];
    let co = &COMPANIES[sup.company];
    let date = day(c, r, 0..20);
    plain(AdcDocument::GoodsReceipt(GoodsReceipt {
        document_title: s(
            ["Delivery Note", "Goods Receipt", "Lieferschein / Delivery Note"][r.random_range(0..3)]
        ),
        delivery_note: s(format!("LS-{}", r.random_range(100_000..999_999))),
        po_number: s(&o.number),
        receipt_date: date,
        posting_date: date,
        supplier_id: s(&sup.id),
        plant: s(co.code),
        items: delivery_items(c, &o, r, co.code),
    }))
}

fn inbound_delivery(c: &Ctx, r: &mut SmallRng) -> Generated {
    let o = po(c, r);
    let sup = &c.world.suppliers[o.partner];
    let co = &COMPANIES[sup.company];
    plain(AdcDocument::InboundDelivery(InboundDelivery {
        document_title: s(["Advance Shipping Notice", "Shipping Notification", "ASN"][r.random_range(0..3)]),
        asn_number: s(format!("ASN{}", r.random_range(1_000_000..9_999_999))),
        supplier_id: s(&sup.id),
        po_number: s(&o.number),
        delivery_date: Some(LooseDate(c.today - Duration::days(r.random_range(0..5)))),
        bill_of_lading: r.random_bool(0.5).then(|| format!("BOL-{}", r.random_range(10000..99999))),
        items: delivery_items(c, &o, r, co.code),
    }))
}

fn outbound_delivery(c: &Ctx, r: &mut SmallRng) -> Generated {
    let o = c.world.sales_order(c.seed, r.random_range(0..400_000));
    let cu = &c.world.customers[o.partner];
    let co = &COMPANIES[cu.company];
    let date = c.today + Duration::days(r.random_range(1..10));
    let mut items = delivery_items(c, &o, r, co.code);
    for it in &mut items {
        it.batch = None;
    }
    plain(AdcDocument::OutboundDelivery(OutboundDelivery {
        document_title: s(["Picking List", "Outbound Delivery", "Delivery request"][r.random_range(0..3)]),
        sales_order: s(&o.number),
        shipping_point: s(co.code),
        delivery_date: Some(LooseDate(date)),
        planned_goods_issue_date: Some(LooseDate(date - Duration::days(1))),
        ship_to: s(&cu.id),
        items,
    }))
}

fn supplier_master(c: &Ctx, r: &mut SmallRng) -> Generated {
    let sup = &c.world.suppliers[r.random_range(0..c.world.suppliers.len())];
    let co = &COMPANIES[sup.company];
    let person = r.random_bool(0.15);
    plain(AdcDocument::SupplierMaster(SupplierMaster {
        document_title: s(
            ["Supplier Registration Form", "Vendor Onboarding", "New supplier request"][r.random_range(0..3)]
        ),
        supplier_name: (!person).then(|| sup.name.clone()),
        first_name: person.then(|| ["Anna", "Ben", "Chloe", "David"][r.random_range(0..4)].to_string()),
        last_name: person.then(|| ["Schmidt", "Miller", "Dubois", "Brown"][r.random_range(0..4)].to_string()),
        category: s(if person { "person" } else { "organization" }),
        grouping: None,
        search_term: None,
        language: s(if co.country == "DE" { "DE" } else { "EN" }),
        street: s(&sup.street),
        house_number: s(r.random_range(1..200).to_string()),
        city: s(sup.city),
        postal_code: s(&sup.postal_code),
        country: s(co.country),
        vat_id: s(&sup.vat),
        iban: s(format!(
            "{}{:02}{:018}",
            co.country,
            r.random_range(10..99),
            r.random_range(0..999_999_999_999_999_999u64)
        )),
        company_code: s(co.code),
        payment_terms: s(sup.payment_terms),
        reconciliation_account: s("21100000"),
    }))
}
