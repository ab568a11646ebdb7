//! The server's and storm's modules form layers: each module uses only modules of lower layers
//! (no import cycle), in the order `docs/architecture.md` gives: for the server, the data path;
//! for storm, what a run is (`plan`), what was got (`observe`), the reports made from those two
//! alone and the network, the actors, the runner, the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The server's layers, lowest first. A module may use only modules of layers before its own.
const SERVER: &[&[&str]] = &[
    &["clock", "counters", "http1", "random", "ws"],
    &["fanout"],
    &["config"],
    &["shield"],
    &["audience", "stage"],
    &["hub"],
    &["cluster", "recorder"],
    &["api"],
    &["endpoints"],
    &["demo"],
];

/// storm's layers, lowest first.
const STORM: &[&[&str]] = &[
    &["error"],
    &["plan"],
    &["observe"],
    &["report", "net"],
    &["actors"],
    &["run"],
    &["cli"],
];

fn uses(dir: &Path, out: &mut BTreeMap<String, BTreeSet<String>>, top: Option<&str>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let module = top.map_or(name.clone(), str::to_owned);
        if path.is_dir() {
            uses(&path, out, Some(&module));
            continue;
        }
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable file");
        let deps = out.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + 7..];
                let dep: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if dep != module {
                    deps.insert(dep);
                }
            }
        }
    }
}

/// Every import of the crate at `crates/{krate}` that goes up (or across) a layer.
fn wrong_imports(krate: &str, layers: &[&[&str]], least_modules: usize) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut graph = BTreeMap::new();
    uses(&src, &mut graph, None);
    assert!(
        graph.len() >= least_modules,
        "the scan of {krate} found the modules: {graph:?}"
    );
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(mine) = layer_of(module) else {
            panic!("{krate}: module `{module}` is in no layer: add it to the layers and docs/architecture.md");
        };
        for dep in deps {
            let theirs =
                layer_of(dep).unwrap_or_else(|| panic!("{krate}: `{module}` uses unknown `{dep}`"));
            if theirs >= mine {
                wrong.push(format!(
                    "{krate}: `{module}` (layer {mine}) uses `{dep}` (layer {theirs})"
                ));
            }
        }
    }
    wrong
}

#[test]
fn server_modules_use_only_lower_layers() {
    let wrong = wrong_imports("server", SERVER, 12);
    assert!(
        wrong.is_empty(),
        "only lower layers may be used:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn storm_modules_use_only_lower_layers() {
    let wrong = wrong_imports("storm", STORM, 8);
    assert!(
        wrong.is_empty(),
        "only lower layers may be used:\n{}",
        wrong.join("\n")
    );
}
