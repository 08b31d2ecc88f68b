//! Every Rust source under a folder, for the tests that read the crate's
//! own code (`tests/layers.rs`, `tests/sizes.rs`).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` (none if there is no `dir`).
pub fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
