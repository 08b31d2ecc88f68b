//! No file of `src/` is over [`MAX_LINES`] lines, its tests aside: a file
//! that long does more than one job and should be split by job (issue 23).
//! A `#[cfg(test)]` module written inline (`mod tests { ... }`) is not
//! counted, so tests can stay beside the code they test; every other line
//! is, comments and blank lines included.

use std::path::Path;

#[path = "common/sources.rs"]
mod sources;

use sources::sources;

/// The most lines a file of `src/` may have outside its test modules.
const MAX_LINES: usize = 700;

/// The lines of `text` outside its inline `#[cfg(test)]` modules: from
/// the attribute to the `}` that closes the module at its indentation.
fn counted_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut counted = 0;
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        let module = lines
            .get(at + 1)
            .map(|next| next.trim_start())
            .filter(|next| {
                line.trim() == "#[cfg(test)]"
                    && (next.starts_with("mod ") || next.starts_with("pub mod "))
                    && next.trim_end().ends_with('{')
            });
        if module.is_some() {
            let indent = &line[..line.len() - line.trim_start().len()];
            let close = format!("{indent}}}");
            let end = lines[at + 2..]
                .iter()
                .position(|line| line.trim_end() == close)
                .map_or(lines.len(), |offset| at + 2 + offset + 1);
            at = end;
        } else {
            counted += 1;
            at += 1;
        }
    }
    counted
}

/// Each file of `src` over [`MAX_LINES`], with its count.
fn oversized(src: &Path) -> Vec<String> {
    let mut over: Vec<String> = sources(src)
        .into_iter()
        .filter_map(|file| {
            let count = counted_lines(&std::fs::read_to_string(&file).unwrap());
            (count > MAX_LINES).then(|| format!("{}: {count} lines", file.display()))
        })
        .collect();
    over.sort();
    over
}

#[test]
fn no_file_in_src_is_over_the_limit_tests_aside() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let over = oversized(&src);
    assert!(
        over.is_empty(),
        "over {MAX_LINES} lines outside their tests, split them by job:\n{}",
        over.join("\n")
    );
}

#[test]
fn every_file_over_the_limit_is_reported_with_its_count_and_tests_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let code = |lines: usize| "fn f() {}\n".repeat(lines);
    let tests = |lines: usize| {
        format!(
            "#[cfg(test)]\nmod tests {{\n    #[test]\n    fn t() {{\n{}    }}\n}}\n",
            "        let _ = 1;\n".repeat(lines)
        )
    };
    std::fs::create_dir(dir.path().join("role")).unwrap();
    let files = [
        ("at_the_limit.rs", code(MAX_LINES)),
        ("big_tests.rs", code(MAX_LINES) + &tests(5_000)),
        ("role/one_over.rs", code(MAX_LINES + 1)),
        (
            "code_after_tests.rs",
            code(600) + &tests(1_000) + &code(101),
        ),
        (
            "nested.rs",
            "mod inner {\n".to_owned()
                + &code(400)
                + "    #[cfg(test)]\n    mod tests {\n        fn t() {}\n    }\n"
                + &code(400)
                + "}\n",
        ),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let over = oversized(dir.path());
    assert_eq!(over.len(), 3, "{over:#?}");
    assert!(
        over[0].ends_with("code_after_tests.rs: 701 lines"),
        "{over:#?}"
    );
    assert!(over[1].ends_with("nested.rs: 802 lines"), "{over:#?}");
    assert!(over[2].ends_with("one_over.rs: 701 lines"), "{over:#?}");
}
