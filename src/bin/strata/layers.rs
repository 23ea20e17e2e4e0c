//! `strata layers`: every registered layer, what it requires and provides,
//! and its parameters (type and range, default, one line of doc).

use crate::jsonl::json_str;
use std::io::{self, Write};
use std::process::ExitCode;
use strata::{LayerDescriptor, ParamKind, Props};

/// Options of `strata layers`.
#[derive(clap::Args, Debug)]
pub struct LayersArgs {
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// Prints the built-in registry's layers.
pub fn run(args: &LayersArgs) -> Result<ExitCode, String> {
    let registry = strata::builtin_registry();
    let text = if args.json { render_json(registry.descriptors()) } else { render_text(registry.descriptors()) };
    match io::stdout().lock().write_all(text.as_bytes()) {
        // `strata layers | head` closes the pipe early: not an error.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("cannot write to stdout: {e}")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn render_text(layers: &[LayerDescriptor]) -> String {
    let name_w = layers.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let params = || layers.iter().flat_map(|d| d.params.iter());
    let param_w = params().map(|p| p.name.len()).max().unwrap_or(0);
    let kind_w = params().map(|p| p.kind.to_string().len()).max().unwrap_or(0);
    // An empty text default means "not set".
    let shown = |d: &'static str| if d.is_empty() { "-" } else { d };
    let default_w = params().map(|p| shown(p.default).len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, d) in layers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{:name_w$}  {}\n", d.name, d.summary));
        out.push_str(&format!("  requires: {}   provides: {}\n", d.requires, d.provides));
        if d.params.is_empty() {
            out.push_str("  (no parameters)\n");
        }
        for p in d.params {
            let local = if p.wire { "" } else { " [local]" };
            let kind = p.kind.to_string();
            out.push_str(&format!("  {:param_w$}  {kind:kind_w$}  default {:default_w$}  {}{local}\n", p.name, shown(p.default), p.doc));
        }
    }
    if params().any(|p| !p.wire) {
        out.push_str("\n[local]: members of one group may use different values (the others must agree)\n");
    }
    out
}

fn props_json(p: Props) -> String {
    let names: Vec<String> = p.names().map(json_str).collect();
    format!("[{}]", names.join(","))
}

fn render_json(layers: &[LayerDescriptor]) -> String {
    let mut items = Vec::with_capacity(layers.len());
    for d in layers {
        let params: Vec<String> = d
            .params
            .iter()
            .map(|p| {
                let kind = match p.kind {
                    ParamKind::U64 { min, max } => format!("\"kind\":\"integer\",\"min\":{min},\"max\":{max}"),
                    ParamKind::Bool => "\"kind\":\"bool\"".to_string(),
                    ParamKind::Str => "\"kind\":\"text\"".to_string(),
                };
                format!("{{\"name\":{},{kind},\"default\":{},\"doc\":{},\"wire\":{}}}", json_str(p.name), json_str(p.default), json_str(p.doc), p.wire)
            })
            .collect();
        items.push(format!(
            "{{\"name\":{},\"summary\":{},\"requires\":{},\"provides\":{},\"params\":[{}]}}",
            json_str(d.name),
            json_str(d.summary),
            props_json(d.requires),
            props_json(d.provides),
            params.join(",")
        ));
    }
    format!("{{\"layers\":[{}]}}\n", items.join(","))
}
