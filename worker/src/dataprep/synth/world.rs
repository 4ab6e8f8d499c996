//! The synthetic company: company codes, suppliers, customers, materials and the purchase /
//! sales orders documents refer to. Built once from the seed; documents pick from it, and orders
//! are derived from their number, so an invoice, the goods receipt and the PO it references agree
//! on supplier, materials and prices without any shared mutable state.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// splitmix64: decorrelates (seed, index) pairs into RNG seeds.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn rng_for(seed: u64, stream: u64, index: u64) -> SmallRng {
    SmallRng::seed_from_u64(mix(mix(seed, stream), index))
}

pub struct Company {
    pub code: &'static str,
    pub country: &'static str,
    pub currency: &'static str,
    pub city: &'static str,
    /// (tax code, rate %) for input tax.
    pub taxes: &'static [(&'static str, f64)],
}

pub const COMPANIES: &[Company] = &[
    Company {
        code: "1010",
        country: "DE",
        currency: "EUR",
        city: "Walldorf",
        taxes: &[("V1", 19.0), ("V2", 7.0)],
    },
    Company { code: "1710", country: "US", currency: "USD", city: "Palo Alto", taxes: &[("I1", 8.0)] },
    Company {
        code: "2010",
        country: "GB",
        currency: "GBP",
        city: "London",
        taxes: &[("V1", 20.0), ("V5", 5.0)],
    },
];

pub struct Partner {
    pub id: String,
    pub name: String,
    pub vat: String,
    pub company: usize,
    pub payment_terms: &'static str,
    pub street: String,
    pub city: &'static str,
    pub postal_code: String,
}

pub struct Material {
    pub id: String,
    pub description: String,
    pub unit: &'static str,
    pub price: f64,
}

pub struct World {
    pub suppliers: Vec<Partner>,
    pub customers: Vec<Partner>,
    pub materials: Vec<Material>,
}

const NAME_A: &[&str] = &[
    "Acme",
    "Bergmann",
    "Nordic",
    "Atlas",
    "Helios",
    "Quantum",
    "Vega",
    "Orion",
    "Summit",
    "Rhein",
    "Alpine",
    "Pioneer",
    "Crescent",
    "Falcon",
    "Granite",
    "Harbor",
    "Ironwood",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Northstar",
];
const NAME_B: &[&str] = &[
    "Industrial",
    "Components",
    "Logistics",
    "Chemicals",
    "Electronics",
    "Packaging",
    "Metals",
    "Office Supply",
    "Tools",
    "Plastics",
    "Textiles",
    "Foods",
    "Energy",
    "Systems",
];
const LEGAL: &[&str] = &["GmbH", "Inc.", "Ltd", "AG", "LLC", "S.A.", "plc"];
const CITIES: &[&str] =
    &["Berlin", "Hamburg", "Munich", "Chicago", "Austin", "Manchester", "Leeds", "Lyon", "Vienna"];
const STREETS: &[&str] =
    &["Hauptstrasse", "Main Street", "Industrieweg", "High Street", "Parkallee", "Oak Avenue"];
const GOODS: &[(&str, &str, &str)] = &[
    ("TG", "Trading good", "PC"),
    ("RM", "Raw material", "KG"),
    ("PK", "Packaging", "EA"),
    ("EL", "Electronic part", "PC"),
    ("CH", "Chemical", "L"),
    ("CB", "Cable", "M"),
];
const ADJ: &[&str] =
    &["steel", "aluminium", "plastic", "copper", "premium", "standard", "heavy-duty", "compact"];
const TERMS: &[&str] = &["0001", "0002", "NT30", "NT60"];

impl World {
    pub fn new(seed: u64) -> World {
        let mut r = rng_for(seed, 0xB0B, 0);
        let partner = |r: &mut SmallRng, base: u64, i: usize| {
            let company = r.random_range(0..COMPANIES.len());
            let c = &COMPANIES[company];
            Partner {
                id: (base + i as u64).to_string(),
                name: format!(
                    "{} {} {}",
                    NAME_A[r.random_range(0..NAME_A.len())],
                    NAME_B[r.random_range(0..NAME_B.len())],
                    LEGAL[r.random_range(0..LEGAL.len())]
                ),
                vat: format!("{}{:09}", c.country, r.random_range(100_000_000u64..999_999_999)),
                company,
                payment_terms: TERMS[r.random_range(0..TERMS.len())],
                street: STREETS[r.random_range(0..STREETS.len())].to_string(),
                city: CITIES[r.random_range(0..CITIES.len())],
                postal_code: format!("{:05}", r.random_range(10000..99999)),
            }
        };
        let suppliers = (0..600).map(|i| partner(&mut r, 17_300_000, i)).collect();
        let customers = (0..500).map(|i| partner(&mut r, 10_100_000, i)).collect();
        let materials = (0..2500)
            .map(|i| {
                let (prefix, kind, unit) = GOODS[i % GOODS.len()];
                Material {
                    id: format!("{prefix}-{:05}", 10000 + i),
                    description: format!(
                        "{} {} {}",
                        ADJ[r.random_range(0..ADJ.len())],
                        kind.to_lowercase(),
                        i % 97
                    ),
                    unit,
                    price: (r.random_range(0.5f64..800.0) * 100.0).round() / 100.0,
                }
            })
            .collect();
        World { suppliers, customers, materials }
    }
}

/// One line of an order.
pub struct OrderLine {
    pub item: u32,
    pub material: usize,
    pub quantity: f64,
    pub price: f64,
}

/// A purchase or sales order, derived from its number.
pub struct Order {
    pub number: String,
    pub partner: usize,
    pub lines: Vec<OrderLine>,
    pub group: String,
}

impl World {
    fn order(&self, seed: u64, stream: u64, n: u64, number: String, partners: usize) -> Order {
        let mut r = rng_for(seed, stream, n);
        let partner = r.random_range(0..partners);
        let lines = (0..r.random_range(1..=4))
            .map(|i| {
                let material = r.random_range(0..self.materials.len());
                OrderLine {
                    item: (i + 1) * 10,
                    material,
                    quantity: r.random_range(1..200) as f64,
                    price: self.materials[material].price,
                }
            })
            .collect();
        Order { number, partner, lines, group: format!("{:03}", r.random_range(1..6)) }
    }

    /// Purchase order 45000xxxxx.
    pub fn purchase_order(&self, seed: u64, n: u64) -> Order {
        self.order(seed, 0x9090, n, (4_500_000_000 + n).to_string(), self.suppliers.len())
    }

    /// Sales order 1xxxxxxx (SAP's number, which deliveries refer to).
    pub fn sales_order(&self, seed: u64, n: u64) -> Order {
        self.order(seed, 0x5050, n, (10_000_000 + n).to_string(), self.customers.len())
    }
}
