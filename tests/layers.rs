//! The layers of `src/`, checked: every `crate::module` a file names (in a
//! `use` line or inline) must sit on a lower layer than the file's own
//! module, so imports point one way and no two modules need each other.
//! docs/architecture.md explains the layers; a change that needs a new
//! arrow changes both.
//!
//! Read from the source text (no build tool needed): comments are skipped,
//! and a module is the first component under `src/` (`hub/fanout.rs` is
//! `hub`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module, from the edge down. A module may name
/// only modules on a strictly lower layer.
const LAYERS: &[(&str, u32)] = &[
    // The edge: wiring, routes, settings, the CLI's client.
    ("server", 9),
    ("http", 8),
    ("client", 8),
    ("config", 7),
    // Who is subscribed to what; the committer and fan-out.
    ("hub", 6),
    // The log engines: Redis, then the seam with the embedded engine.
    ("cluster", 5),
    ("log", 4),
    // Storage.
    ("history", 3),
    // Pure cores.
    ("subscription", 2),
    ("auth", 1),
    ("update", 1),
    ("topic", 0),
    ("sse", 0),
    // What /metrics measures: named by the hub, the engines and storage.
    ("metrics", 0),
];

/// Arrows the layers would allow but the design does not: the hub talks
/// to whichever engine runs only through the seam (`log`), so it must not
/// know the Redis engine.
const FORBIDDEN: &[(&str, &str)] = &[("hub", "cluster")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The modules a source text names as `crate::NAME`, outside comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` names several.
            if name.is_empty() && after.starts_with('{') {
                let inner = after[1..].split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let part: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !part.is_empty() {
                        out.insert(part);
                    }
                }
            } else if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

/// Module -> the modules it names, over every file of `src/`.
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let named = named_modules(&text);
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(named.into_iter().filter(|m| *m != module));
    }
    graph
}

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| {
            panic!(
                "module `{module}` has no layer: add it to LAYERS in tests/layers.rs \
                 and to docs/architecture.md"
            )
        })
}

#[test]
fn imports_point_down_the_layers() {
    let graph = arrows();
    assert!(
        graph.contains_key("hub") && graph.contains_key("cluster") && graph.contains_key("log"),
        "the check found no hub, cluster or log module: is it reading src/? {graph:?}"
    );
    let mut wrong = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if layer(to) >= layer(from) {
                wrong.push(format!(
                    "{from} (layer {}) names {to} (layer {})",
                    layer(from),
                    layer(to)
                ));
            }
            if FORBIDDEN.contains(&(from.as_str(), to.as_str())) {
                wrong.push(format!("{from} names {to}, which the design forbids"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or across (see docs/architecture.md):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_module_is_on_a_cycle() {
    // Implied by the layers, and checked on its own so that a changed
    // LAYERS table cannot hide a cycle.
    let graph = arrows();
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_of_names_finds_them() {
    let text = "use crate::hub::{Hub, HubError};\n\
                use crate::{log, update::Update};\n\
                // crate::cluster in a comment\n\
                let x = crate::history::now_ms(); // crate::sse\n";
    let named: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(named, ["history", "hub", "log", "update"]);
}
