//! `sapllm-worker catalog`: import tenant API specs into a catalog file, and show a catalog.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use sapllm_sap::catalog::{Catalog, compact_schema, create_payload_schema};
use sapllm_sap::import::import_file;

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Import OData V2 $metadata (EDMX) and/or OpenAPI 3 JSON files into a catalog file.
    Import {
        /// Spec files (format detected from content).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Catalog file to write.
        #[arg(long, default_value = "catalog.json")]
        out: PathBuf,
        /// Start from the built-in catalog (imported APIs replace built-in ones of the same name).
        #[arg(long)]
        with_builtin: bool,
    },
    /// Print a catalog (default: the built-in one).
    Show {
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Only this API.
        #[arg(long)]
        api: Option<String>,
        /// Print the JSON Schema of the API's create payload (needs --api).
        #[arg(long)]
        json_schema: bool,
        /// Print the catalog as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: CatalogArgs) -> Result<ExitCode> {
    match args.command {
        CatalogCommand::Import { files, out, with_builtin } => {
            let mut cat = if with_builtin {
                Catalog::builtin()
            } else {
                Catalog { version: 1, apis: Vec::new(), aliases: Vec::new() }
            };
            for f in &files {
                let api = import_file(f)?;
                eprintln!(
                    "imported {} from {}: {}",
                    api.name,
                    f.display(),
                    match &api.create {
                        Some(e) => format!(
                            "create {} ({} fields, {} navigations)",
                            e.entity_set,
                            e.fields.len(),
                            e.navigations.len()
                        ),
                        None => "read-only (no creatable entity set)".into(),
                    }
                );
                cat.apis.retain(|a| a.name != api.name);
                cat.apis.push(api);
            }
            cat.check().map_err(anyhow::Error::msg)?;
            cat.save(&out)?;
            eprintln!("wrote {} APIs to {}", cat.apis.len(), out.display());
        }
        CatalogCommand::Show { catalog, api, json_schema, json } => {
            let cat = match &catalog {
                Some(p) => Catalog::load(p)?,
                None => Catalog::builtin(),
            };
            let apis: Vec<_> = match &api {
                Some(name) => match cat.api(name) {
                    Some(a) => vec![a],
                    None => {
                        let names: Vec<&str> = cat.apis.iter().map(|a| a.name.as_str()).collect();
                        bail!("no API {name:?} in the catalog; it has {}", names.join(", "))
                    }
                },
                None => cat.apis.iter().collect(),
            };
            if json_schema {
                let Some(a) = api.as_ref().and(apis.first()) else { bail!("--json-schema needs --api NAME") };
                match create_payload_schema(a) {
                    Some(s) => println!("{}", serde_json::to_string_pretty(&s)?),
                    None => bail!("{} is read-only: it has no create payload", a.name),
                }
            } else if json {
                println!("{}", serde_json::to_string_pretty(&apis)?);
            } else {
                for a in apis {
                    let c = compact_schema(a);
                    println!("{}  [{}]  serves: {}", a.name, a.domain, a.doc_types.join(", "));
                    println!("  endpoint: {}", c.endpoint);
                    println!("  {}\n", c.schema);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
