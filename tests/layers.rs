//! The crate's layers depend only downward: `api` → `policy` → the shared
//! edges (`cache`, `cluster`, `contract`, `wire`, ...) → the roles
//! (`controller`, `controlplane`, `sidecar`, `egress`, `demo_agent`, `cli`)
//! → `operator` and `main`. A role never imports another role. Read from
//! the sources, so a new `use` that breaks the rule fails here, with the
//! file and line.
//!
//! The binaries and the benchmarks are read too. `src/main.rs` sits at the
//! top and may import any module: it is where the roles are composed into
//! subcommands. Each of `src/bin/` fronts one role and imports only what
//! that role may (`kubectl-wopr` is the `cli`'s: no other role). The
//! benchmarks also sit at the top and may use anything public: they measure
//! each layer from outside, and drive whole roles (a control plane, a
//! sidecar) as the binaries do.
//!
//! Layers also bound the external crates: the pure layers (`api`,
//! `policy`) neither talk to the API server nor do I/O or serve (no kube
//! client, no tokio, tonic, axum, rmcp, no files, sockets or processes),
//! only the `store` speaks SQL, and only `main.rs` uses `anyhow` (the
//! library's errors, and so the `kubectl-wopr` binary's, are `thiserror`
//! enums).

use std::path::Path;

#[path = "common/sources.rs"]
mod sources;

use sources::sources;

/// Each top-level module and the layer it sits in, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("proto", 0),
    ("policy", 1),
    ("approval", 2),
    ("audit", 2),
    ("bounded", 2),
    ("cache", 2),
    ("clock", 2),
    ("cluster", 2),
    ("contract", 2),
    ("inbox", 2),
    ("logging", 2),
    ("openmetrics", 2),
    ("p2p", 2),
    ("shutdown", 2),
    ("store", 2),
    ("tls", 2),
    ("wire", 2),
    ("controller", ROLE),
    ("controlplane", ROLE),
    ("sidecar", ROLE),
    ("egress", ROLE),
    ("export", ROLE),
    ("demo_agent", ROLE),
    ("cli", ROLE),
    ("operator", 4),
];

/// The layer of the roles, which never import each other.
const ROLE: u8 = 3;
/// Above every module: `main.rs` and the benchmarks.
const TOP: u8 = 5;

/// Each binary of `src/bin/` and the role it fronts.
const BINARIES: &[(&str, &str)] = &[("kubectl-wopr", "cli")];

/// External paths some modules may not use: a path is caught when it is
/// one of `paths` or inside one (`kube::runtime::watcher`).
struct CrateRule {
    paths: &'static [&'static str],
    /// Whether the rule binds the code of this module or binary.
    binds: fn(&Owner) -> bool,
    why: &'static str,
}

const CRATE_RULES: &[CrateRule] = &[
    CrateRule {
        paths: &[
            "kube::Client",
            "kube::client",
            "kube::Api",
            "kube::api::Api",
            "kube::runtime",
            "kube::Config",
            "kube::config",
            "kube_lease_manager",
        ],
        binds: pure,
        why: "a pure layer does not talk to the API server",
    },
    CrateRule {
        paths: &[
            "tokio",
            "tokio_stream",
            "tokio_util",
            "tonic",
            "tonic_health",
            "tonic_reflection",
            "axum",
            "hyper_util",
            "tower",
            "rmcp",
            "std::fs",
            "std::net",
            "std::process",
        ],
        binds: pure,
        why: "a pure layer does no I/O and serves nothing",
    },
    CrateRule {
        paths: &["sqlx"],
        binds: not_the_store,
        why: "only the store speaks SQL",
    },
    CrateRule {
        paths: &["anyhow"],
        binds: below_main,
        why: "errors are thiserror enums; anyhow only in main",
    },
];

fn pure(owner: &Owner) -> bool {
    ["api", "policy"].contains(&owner.name.as_str())
}

fn not_the_store(owner: &Owner) -> bool {
    owner.name != "store"
}

fn below_main(owner: &Owner) -> bool {
    owner.layer < TOP
}

/// Whose code a file is.
struct Owner {
    /// The top-level module, `main`, or the role a binary fronts.
    name: String,
    layer: u8,
}

/// The top-level module a source file of `src` belongs to (`src/controller/run.rs` → `controller`).
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

/// The role `src/bin/<name>.rs` fronts.
fn binary_role(name: &str) -> Option<&'static str> {
    BINARIES
        .iter()
        .find(|(binary, _)| *binary == name)
        .map(|(_, role)| *role)
}

/// Whose code `file` of `src` is; `None` for `lib.rs` (module lines only)
/// and for what has no layer (which `every_top_level_module_has_a_layer`
/// and `every_binary_fronts_a_role` report).
fn owner_in_src(src: &Path, file: &Path) -> Option<Owner> {
    let module = module_of(src, file)?;
    match module.as_str() {
        "lib" => None,
        "main" => Some(Owner {
            name: module,
            layer: TOP,
        }),
        "bin" => {
            let role = binary_role(file.file_stem()?.to_str()?)?;
            Some(Owner {
                name: role.to_owned(),
                layer: layer(role)?,
            })
        }
        _ => Some(Owner {
            layer: layer(&module)?,
            name: module,
        }),
    }
}

/// The code of `text` without its line comments, line for line.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect()
}

/// A token of a path: a name, `::`, a brace, a comma or `*`.
#[derive(Debug, PartialEq)]
enum Token {
    Name(String),
    Colons,
    Open,
    Close,
    Comma,
    Star,
}

fn tokens(code: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            ',' => tokens.push(Token::Comma),
            '*' => tokens.push(Token::Star),
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                tokens.push(Token::Colons);
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut name = c.to_string();
                while let Some(&next) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                    name.push(next);
                    chars.next();
                }
                tokens.push(Token::Name(name));
            }
            _ => {}
        }
    }
    tokens
}

/// The full paths a `use` tree names (`kube::{Api, runtime::watcher}` →
/// `kube::Api`, `kube::runtime::watcher`), from `tokens[*at]` on.
fn expand(tokens: &[Token], at: &mut usize, prefix: &str, paths: &mut Vec<String>) {
    let mut path = prefix.to_owned();
    while let Some(token) = tokens.get(*at) {
        match token {
            Token::Name(name) if name == "as" => {
                *at += 2; // the rename
                break;
            }
            Token::Name(name) => {
                if name != "self" {
                    if !path.is_empty() {
                        path.push_str("::");
                    }
                    path.push_str(name);
                }
                *at += 1;
            }
            Token::Colons => *at += 1,
            Token::Star => {
                path.push_str("::*");
                *at += 1;
                break;
            }
            Token::Open => {
                *at += 1;
                while tokens.get(*at).is_some_and(|t| *t != Token::Close) {
                    expand(tokens, at, &path, paths);
                    if tokens.get(*at) == Some(&Token::Comma) {
                        *at += 1;
                    }
                }
                *at += 1; // the `}`
                return;
            }
            Token::Close | Token::Comma => break,
        }
    }
    if !path.is_empty() {
        paths.push(path);
    }
}

/// Every path of the code (not the comments) of `text` with its line: each
/// a `use` names, expanded, and each `a::b` written in the code.
fn paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let lines = code_lines(text);
    let mut number = 0;
    while number < lines.len() {
        let line = lines[number];
        let trimmed = line.trim_start();
        let rest = ["pub ", "pub(crate) ", "pub(super) "]
            .iter()
            .find_map(|visibility| trimmed.strip_prefix(visibility))
            .unwrap_or(trimmed);
        if let Some(tree) = rest.strip_prefix("use ") {
            // A `use` may span lines up to its `;`.
            let mut statement = tree.to_owned();
            let first = number;
            while !statement.contains(';') && number + 1 < lines.len() {
                number += 1;
                statement.push(' ');
                statement.push_str(lines[number]);
            }
            let statement = statement.split(';').next().unwrap_or_default();
            let mut named = Vec::new();
            expand(&tokens(statement), &mut 0, "", &mut named);
            found.extend(named.into_iter().map(|path| (first + 1, path)));
        } else {
            found.extend(
                written_paths(line)
                    .into_iter()
                    .map(|path| (number + 1, path)),
            );
        }
        number += 1;
    }
    found
}

/// The `a::b::c` paths written in one line of code.
fn written_paths(line: &str) -> Vec<String> {
    let tokens = tokens(line);
    let mut found = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let Token::Name(first) = &tokens[at] else {
            at += 1;
            continue;
        };
        let mut path = first.clone();
        at += 1;
        while let (Some(Token::Colons), Some(Token::Name(next))) =
            (tokens.get(at), tokens.get(at + 1))
        {
            path.push_str("::");
            path.push_str(next);
            at += 2;
        }
        if path.contains("::") {
            found.push(path);
        }
    }
    found
}

/// The crate's module a path names (`crate::policy::decide` or
/// `wopr_operator::policy::decide` → `policy`), if it names one.
fn crate_module(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("crate::")
        .or_else(|| path.strip_prefix("wopr_operator::"))?;
    rest.split("::").next()
}

/// Whether `path` is `forbidden` or inside it.
fn inside(path: &str, forbidden: &str) -> bool {
    let path = path.trim_start_matches("::");
    path == forbidden
        || path
            .strip_prefix(forbidden)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// What `file`, whose code `owner`'s is, imports against the rules.
fn file_violations(file: &Path, owner: &Owner) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut violations = Vec::new();
    for (line, path) in paths(&text) {
        if let Some(imported) = crate_module(&path)
            && let Some(imported_layer) = layer(imported)
        {
            let upward = imported_layer > owner.layer;
            let across =
                imported_layer == owner.layer && owner.layer == ROLE && imported != owner.name;
            if upward || across {
                violations.push(format!(
                    "{}:{line}: `{}` imports `{imported}`",
                    file.display(),
                    owner.name
                ));
            }
        }
        for rule in CRATE_RULES.iter().filter(|rule| (rule.binds)(owner)) {
            if let Some(forbidden) = rule.paths.iter().find(|forbidden| inside(&path, forbidden)) {
                violations.push(format!(
                    "{}:{line}: `{}` uses `{forbidden}`: {}",
                    file.display(),
                    owner.name,
                    rule.why
                ));
            }
        }
    }
    violations.dedup();
    violations
}

/// Every import of the crate in `root` (its `src/` and `benches/`) that
/// goes up a layer, across to another role, or to an external crate its
/// layer may not use.
fn violations(root: &Path) -> Vec<String> {
    let src = root.join("src");
    let mut violations = Vec::new();
    for file in sources(&src) {
        if let Some(owner) = owner_in_src(&src, &file) {
            violations.extend(file_violations(&file, &owner));
        }
    }
    let benches = Owner {
        name: "benches".into(),
        layer: TOP,
    };
    for file in sources(&root.join("benches")) {
        violations.extend(file_violations(&file, &benches));
    }
    violations
}

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = crate_root().join("src");
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
fn every_binary_fronts_a_role() {
    for file in sources(&crate_root().join("src/bin")) {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let role = binary_role(name);
        assert!(
            role.is_some_and(|role| layer(role) == Some(ROLE)),
            "name the role src/bin/{name}.rs fronts in BINARIES in tests/layers.rs"
        );
    }
}

/// The rooms made before their code arrives are where the layering
/// expects them: a role of its own, and folders in their role.
#[test]
fn the_rooms_for_what_comes_next_have_their_layers() {
    let src = crate_root().join("src");
    assert_eq!(layer("egress"), Some(ROLE), "egress is a role");
    for room in ["egress/mod.rs", "controlplane/peers/mod.rs"] {
        assert!(src.join(room).is_file(), "src/{room} is missing");
    }
}

#[test]
fn modules_depend_only_downward_and_roles_never_on_each_other() {
    let violations = violations(crate_root());
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Writes `files` (path under the crate root, text) into a new crate
/// root, and asserts that the checker reports there exactly what
/// `expected` says, in order of file and line: each report ends with its
/// `expected` line.
fn assert_reported(files: &[(&str, &str)], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let mut found = violations(dir.path());
    found.sort();
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found_one, expected) in found.iter().zip(expected) {
        assert!(found_one.ends_with(expected), "{found:#?}");
    }
}

#[test]
fn a_role_importing_another_is_caught() {
    assert_reported(
        &[
            (
                "src/sidecar/engine.rs",
                "// crate::controller in a comment is fine\nuse crate::controller::status::summary;\nuse crate::policy::decide;\n",
            ),
            ("src/policy.rs", "use crate::cache::Stores;\n"),
        ],
        &[
            "policy.rs:1: `policy` imports `cache`",
            "engine.rs:2: `sidecar` imports `controller`",
        ],
    );
}

/// The egress service is a role like the others: it imports neither
/// another role nor anything above, and none imports it; imports in a
/// `use` group are caught as well as plain ones.
#[test]
fn egress_importing_a_role_or_a_role_importing_egress_is_caught() {
    assert_reported(
        &[
            (
                "src/egress/mod.rs",
                "use crate::{policy::decide, controlplane::auth::Authenticator};\nuse crate::operator::run;\n",
            ),
            ("src/sidecar/run.rs", "fn f() { crate::egress::serve(); }\n"),
        ],
        &[
            "egress/mod.rs:1: `egress` imports `controlplane`",
            "egress/mod.rs:2: `egress` imports `operator`",
            "run.rs:1: `sidecar` imports `egress`",
        ],
    );
}

/// `main.rs` may import any module; `kubectl-wopr` fronts the `cli` and
/// may not import another role; benchmarks may use anything public.
#[test]
fn a_binary_importing_past_its_role_is_caught() {
    assert_reported(
        &[
            (
                "src/main.rs",
                "use wopr_operator::operator;\nuse wopr_operator::sidecar::run::SidecarArgs;\n",
            ),
            (
                "src/bin/kubectl-wopr.rs",
                "use wopr_operator::cli::Cli;\nuse wopr_operator::api::Session;\nuse wopr_operator::controlplane::auth::Authenticator;\n",
            ),
            (
                "benches/broker.rs",
                "use wopr_operator::controlplane::serve;\nuse wopr_operator::sidecar::run;\n",
            ),
        ],
        &["kubectl-wopr.rs:3: `cli` imports `controlplane`"],
    );
}

#[test]
fn the_pure_layers_talking_to_the_api_server_are_caught() {
    const WHY: &str = "a pure layer does not talk to the API server";
    assert_reported(
        &[
            (
                "src/policy/resolve.rs",
                "use kube::ResourceExt;\nuse kube::api::ObjectMeta;\nuse kube::{\n    Resource,\n    runtime::watcher,\n};\n",
            ),
            (
                "src/api/grant.rs",
                "use kube::{CustomResource, KubeSchema};\nfn f(c: kube::Client) {}\nuse kube::api::{Api, PostParams};\n",
            ),
            (
                "src/controller/run.rs",
                "use kube::{Api, Client, runtime::watcher};\n",
            ),
        ],
        &[
            &format!("grant.rs:2: `api` uses `kube::Client`: {WHY}"),
            &format!("grant.rs:3: `api` uses `kube::api::Api`: {WHY}"),
            &format!("resolve.rs:3: `policy` uses `kube::runtime`: {WHY}"),
        ],
    );
}

#[test]
fn the_pure_layers_doing_io_or_serving_are_caught() {
    const WHY: &str = "a pure layer does no I/O and serves nothing";
    assert_reported(
        &[
            ("src/policy/decide.rs", "use tonic::Status;\n"),
            (
                "src/api/session.rs",
                "use std::{fs, sync::Arc};\nfn f() { tokio::spawn(async {}); }\n",
            ),
            ("src/sidecar/run.rs", "use tonic::Status;\nuse std::fs;\n"),
        ],
        &[
            &format!("session.rs:1: `api` uses `std::fs`: {WHY}"),
            &format!("session.rs:2: `api` uses `tokio`: {WHY}"),
            &format!("decide.rs:1: `policy` uses `tonic`: {WHY}"),
        ],
    );
}

#[test]
fn sql_outside_the_store_is_caught() {
    assert_reported(
        &[
            ("src/store/audit.rs", "use sqlx::Row;\n"),
            ("src/controlplane/audit.rs", "fn f(p: &sqlx::AnyPool) {}\n"),
        ],
        &["audit.rs:1: `controlplane` uses `sqlx`: only the store speaks SQL"],
    );
}

#[test]
fn anyhow_in_the_library_is_caught() {
    const WHY: &str = "errors are thiserror enums; anyhow only in main";
    assert_reported(
        &[
            ("src/main.rs", "use anyhow::Context;\n"),
            (
                "benches/store.rs",
                "fn f() -> anyhow::Result<()> { Ok(()) }\n",
            ),
            (
                "src/cli/mod.rs",
                "pub fn run() -> anyhow::Result<()> { Ok(()) }\n",
            ),
            ("src/bin/kubectl-wopr.rs", "use anyhow::Context;\n"),
        ],
        &[
            &format!("kubectl-wopr.rs:1: `cli` uses `anyhow`: {WHY}"),
            &format!("mod.rs:1: `cli` uses `anyhow`: {WHY}"),
        ],
    );
}
