//! The module layers written in `src/lib.rs` hold: every `crate::X` a module names is of a
//! lower layer, so no two modules import each other. Reads the source as text.

use std::collections::BTreeMap;
use std::path::Path;

/// `module -> layer`, from the numbered list under `# Layers` in lib.rs.
fn documented_layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let section = lib
        .split("//! # Layers")
        .nth(1)
        .expect("lib.rs documents its layers under `# Layers`");
    for line in section
        .lines()
        .map(|line| line.trim_start_matches("//!").trim())
    {
        let Some((number, modules)) = line.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        for module in modules.split(',') {
            layers.insert(module.trim().trim_matches('`').to_owned(), layer);
        }
    }
    layers
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The modules `text` names as `crate::NAME`.
fn named_modules(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, _)| {
            text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let layers = documented_layers(&lib);
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|line| line.trim_end_matches(';'))
        .collect();
    for module in &declared {
        assert!(
            layers.contains_key(*module),
            "{module} has no layer in lib.rs"
        );
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(&own) = layers.get(&module) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for named in named_modules(&text) {
            if named == module {
                continue;
            }
            if let Some(&layer) = layers.get(&named) {
                if layer >= own {
                    violations.push(format!(
                        "{} (layer {own}) imports {named} (layer {layer})",
                        relative.display()
                    ));
                }
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
