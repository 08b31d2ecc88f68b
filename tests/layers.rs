//! The crate's layers depend only downward: `api` → `policy` → the shared
//! edges (`cache`, `cluster`, `contract`, `wire`, ...) → the roles
//! (`controller`, `controlplane`, `sidecar`, `demo_agent`, `cli`) → `operator` and `main`. A role
//! never imports another role. Read from the sources, so a new `use` that
//! breaks the rule fails here, with the file and line.

use std::path::{Path, PathBuf};

/// Each top-level module and the layer it sits in, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("proto", 0),
    ("policy", 1),
    ("approval", 2),
    ("audit", 2),
    ("cache", 2),
    ("clock", 2),
    ("cluster", 2),
    ("contract", 2),
    ("inbox", 2),
    ("logging", 2),
    ("shutdown", 2),
    ("store", 2),
    ("wire", 2),
    ("controller", 3),
    ("controlplane", 3),
    ("sidecar", 3),
    ("demo_agent", 3),
    ("cli", 3),
    ("operator", 4),
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a source file belongs to (`src/controller/run.rs` → `controller`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

fn layer(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

/// The `crate::<module>` paths of the code (not the comments) of `text`, with line numbers.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
            rest = after;
        }
    }
    found
}

/// Every import that goes up a layer, or across to another role.
fn violations(src: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    for file in sources(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let Some(own_layer) = layer(&module) else {
            continue; // lib.rs, main.rs, bin/
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, imported) in crate_paths(&text) {
            let Some(imported_layer) = layer(&imported) else {
                continue;
            };
            let upward = imported_layer > own_layer;
            let across = imported_layer == own_layer && own_layer == 3 && imported != module;
            if upward || across {
                violations.push(format!(
                    "{}:{line}: `{module}` imports `{imported}`",
                    file.display()
                ));
            }
        }
    }
    violations
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let module = name.trim_end_matches(".rs");
        // The binaries (main.rs, bin/) sit above every layer.
        if !["lib", "main", "bin"].contains(&module) {
            assert!(
                layer(module).is_some(),
                "give src/{name} a layer in tests/layers.rs"
            );
        }
    }
}

#[test]
fn modules_depend_only_downward_and_roles_never_on_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = violations(&src);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn a_role_importing_another_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sidecar")).unwrap();
    std::fs::write(
        dir.path().join("sidecar/engine.rs"),
        "// crate::controller in a comment is fine\nuse crate::controller::status::summary;\nuse crate::policy::decide;\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("policy.rs"), "use crate::cache::Stores;\n").unwrap();
    let mut found = violations(dir.path());
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].ends_with("policy.rs:1: `policy` imports `cache`"),
        "{found:?}"
    );
    assert!(
        found[1].ends_with("engine.rs:2: `sidecar` imports `controller`"),
        "{found:?}"
    );
}
