//! storm's modules form layers: each uses only modules of lower layers (no import cycle), in
//! the order the crate's docs give: what a run is (`plan`), what was got (`observe`), the
//! reports made from those two alone, the network, the actors, the runner, the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. A module may use only modules of layers listed before its own.
const LAYERS: &[&[&str]] = &[
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

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    uses(&src, &mut graph, None);
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(mine) = layer_of(module) else {
            panic!("module `{module}` is in no layer: add it to LAYERS and the crate docs");
        };
        for dep in deps {
            let theirs = layer_of(dep).unwrap_or_else(|| panic!("`{module}` uses unknown `{dep}`"));
            if theirs >= mine {
                wrong.push(format!(
                    "`{module}` (layer {mine}) uses `{dep}` (layer {theirs})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "only lower layers may be used:\n{}",
        wrong.join("\n")
    );
    assert!(graph.len() >= 8, "the scan found the modules: {graph:?}");
}
