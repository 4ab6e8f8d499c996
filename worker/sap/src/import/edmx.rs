//! OData V2 `$metadata` (EDMX) importer. Reads entity types (properties with EDM type, MaxLength,
//! Precision/Scale, keys, `sap:creatable`), associations (multiplicity of each end) and entity
//! sets (`sap:creatable`), then builds the root create entity with its deep-insert navigations.

use std::collections::HashMap;

use roxmltree::{Document, Node, ParsingOptions};

use crate::catalog::{ApiSpec, EdmType, EntitySpec, FieldSpec, NavigationSpec};

const SAP_NS: &str = "http://www.sap.com/Protocols/SAPData";
/// Deep insert nests header -> item -> sub-item at most; deeper navigations are lookups.
const MAX_DEPTH: usize = 2;

struct TypeInfo {
    fields: Vec<FieldSpec>,
    /// (navigation name, association qualified name, target role)
    navs: Vec<(String, String, String)>,
}

struct Model {
    types: HashMap<String, TypeInfo>,
    /// association -> role -> (entity type, to-many)
    assocs: HashMap<String, HashMap<String, (String, bool)>>,
    /// entity type -> (entity set, creatable)
    sets_by_type: HashMap<String, (String, bool)>,
}

fn sap_attr<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attribute((SAP_NS, name))
}

fn elements<'a, 'i>(n: Node<'a, 'i>, tag: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| c.is_element() && c.tag_name().name() == tag)
}

/// Imports an EDMX document. `source` names the file for the catalog's provenance.
pub fn import_edmx(text: &str, source: &str) -> Result<ApiSpec, String> {
    let opts = ParsingOptions { allow_dtd: true, ..ParsingOptions::default() };
    let doc = Document::parse_with_options(text, opts).map_err(|e| format!("XML error: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Edmx" {
        return Err(format!("root element is <{}>, expected <edmx:Edmx>", root.tag_name().name()));
    }
    let schemas: Vec<Node> =
        root.descendants().filter(|n| n.is_element() && n.tag_name().name() == "Schema").collect();
    if schemas.is_empty() {
        return Err("no <Schema> element (is this $metadata?)".into());
    }
    let mut model = Model { types: HashMap::new(), assocs: HashMap::new(), sets_by_type: HashMap::new() };
    let mut service = String::new();
    let mut set_order: Vec<(String, String, bool)> = Vec::new();
    let mut actions = Vec::new();
    for schema in &schemas {
        let ns = schema.attribute("Namespace").unwrap_or_default();
        for et in elements(*schema, "EntityType") {
            let name = et.attribute("Name").ok_or("EntityType without Name")?;
            model.types.insert(format!("{ns}.{name}"), read_type(et)?);
        }
        for a in elements(*schema, "Association") {
            let name = a.attribute("Name").ok_or("Association without Name")?;
            let ends = elements(a, "End")
                .filter_map(|e| {
                    let role = e.attribute("Role")?.to_string();
                    let ty = e.attribute("Type")?.to_string();
                    Some((role, (ty, e.attribute("Multiplicity") == Some("*"))))
                })
                .collect();
            model.assocs.insert(format!("{ns}.{name}"), ends);
        }
        for c in elements(*schema, "EntityContainer") {
            if service.is_empty() {
                service = ns.to_string();
            }
            for s in elements(c, "EntitySet") {
                let (Some(n), Some(t)) = (s.attribute("Name"), s.attribute("EntityType")) else { continue };
                let creatable = sap_attr(s, "creatable") != Some("false");
                model.sets_by_type.entry(t.to_string()).or_insert((n.to_string(), creatable));
                set_order.push((n.to_string(), t.to_string(), creatable));
            }
            for f in elements(c, "FunctionImport") {
                if let Some(n) = f.attribute("Name") {
                    actions.push(n.to_string());
                }
            }
        }
    }
    if service.is_empty() {
        return Err("no <EntityContainer>: cannot tell the service's entity sets".into());
    }
    // Candidates: creatable sets with their creatable to-many children.
    let creatable: Vec<&(String, String, bool)> = set_order.iter().filter(|s| s.2).collect();
    let candidates: Vec<(String, Vec<String>)> = creatable
        .iter()
        .map(|(set, ty, _)| {
            let kids = model.types.get(ty).map_or_else(Vec::new, |t| {
                t.navs
                    .iter()
                    .filter_map(|(_, assoc, role)| {
                        let (target, many) = model.assocs.get(assoc)?.get(role)?;
                        let (tset, tcreat) = model.sets_by_type.get(target)?;
                        (*many && *tcreat).then(|| tset.clone())
                    })
                    .collect()
            });
            (set.clone(), kids)
        })
        .collect();
    let create = super::choose_root(&candidates).map(|i| {
        let (set, ty, _) = creatable[i];
        build_entity(&model, set, ty, 0, &mut vec![ty.clone()])
    });
    Ok(ApiSpec {
        name: service.clone(),
        title: service.clone(),
        service_path: format!("/sap/opu/odata/sap/{service}"),
        domain: super::guess_domain(&service),
        doc_types: Vec::new(),
        read_only: create.is_none(),
        create,
        actions,
        source: source.to_string(),
    })
}

fn read_type(et: Node) -> Result<TypeInfo, String> {
    let keys: Vec<&str> = elements(et, "Key")
        .flat_map(|k| elements(k, "PropertyRef"))
        .filter_map(|p| p.attribute("Name"))
        .collect();
    let mut fields = Vec::new();
    for p in elements(et, "Property") {
        let name = p.attribute("Name").ok_or("Property without Name")?;
        let ty = p.attribute("Type").unwrap_or("Edm.String");
        // Complex types and unknown EDM types are not sent on create by document routing.
        let Some(edm) = EdmType::parse(ty) else { continue };
        let mut f = FieldSpec::new(name, edm);
        f.max_length = p.attribute("MaxLength").and_then(|v| v.parse().ok());
        if edm == EdmType::Decimal {
            f.precision = p.attribute("Precision").and_then(|v| v.parse().ok());
            f.scale = p.attribute("Scale").and_then(|v| v.parse().ok());
        }
        f.key = keys.contains(&name);
        f.creatable = sap_attr(p, "creatable") != Some("false");
        fields.push(f);
    }
    let navs = elements(et, "NavigationProperty")
        .filter_map(|n| {
            Some((
                n.attribute("Name")?.to_string(),
                n.attribute("Relationship")?.to_string(),
                n.attribute("ToRole")?.to_string(),
            ))
        })
        .collect();
    Ok(TypeInfo { fields, navs })
}

fn build_entity(m: &Model, set: &str, ty: &str, depth: usize, path: &mut Vec<String>) -> EntitySpec {
    let info = m.types.get(ty);
    let mut navigations = Vec::new();
    if depth < MAX_DEPTH {
        for (name, assoc, role) in info.map_or(&[][..], |t| &t.navs[..]) {
            let Some((target, many)) = m.assocs.get(assoc).and_then(|a| a.get(role)) else { continue };
            // Back-references (item -> header) would recurse; only descend into new types.
            if path.contains(target) {
                continue;
            }
            let Some((tset, _)) = m.sets_by_type.get(target) else { continue };
            path.push(target.clone());
            let entity = build_entity(m, tset, target, depth + 1, path);
            path.pop();
            navigations.push(NavigationSpec {
                name: name.clone(),
                many: *many,
                entity,
                item_numbering: None,
                required: false,
            });
        }
    }
    EntitySpec {
        entity_set: set.to_string(),
        entity_type: ty.rsplit('.').next().unwrap_or(ty).to_string(),
        fields: info.map_or_else(Vec::new, |t| t.fields.clone()),
        navigations,
        items_required_any_of: Vec::new(),
    }
}
