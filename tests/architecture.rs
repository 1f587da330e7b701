//! The codebase's shape, checked: no two top-level modules of a crate import each other (directly
//! or round a longer loop), every module says what it owns in its first lines, and no file of the
//! worker grows past 600 lines without saying why at its top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &[
    "proto",
    "queue",
    "store",
    "net",
    "plan",
    "coordinator",
    "worker",
    "text",
    "src",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate's source folder.
fn src_of(krate: &str) -> PathBuf {
    if krate == "src" {
        root().join("src")
    } else {
        root().join(krate).join("src")
    }
}

/// The top-level module a file belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main"].contains(&name.as_str())).then_some(name)
}

/// Top-level modules a file refers to through `crate::NAME`, with the test code left out.
fn references(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    // Comments (doc links such as [`crate::layout`]) are not imports.
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // `spotbatch_crate::…` is another crate; `$crate::` is a macro's.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out
}

/// Finds a cycle in a directed graph, as the list of nodes round it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = src_of(krate);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(module) = top_module(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read a source file");
        let refs = graph.entry(module.clone()).or_default();
        for r in references(&text) {
            if r != module {
                refs.insert(r);
            }
        }
    }
    graph
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    for krate in CRATES {
        let graph = module_graph(krate);
        if let Some(c) = cycle(&graph) {
            panic!("{krate}: modules import each other: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    // The check itself: a loop of three is found, a chain is not.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert!(cycle(&g).is_none());
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
    let refs = references("use crate::steal::Host;\nlet x = spotbatch_crate::y; $crate::z;");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["steal".to_string()]
    );
}

#[test]
fn every_module_says_what_it_owns_and_worker_files_stay_small() {
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&src_of(krate), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read a source file");
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("//!"),
                "{}: the first line must say what the module owns (`//! …`)",
                f.display()
            );
            if *krate == "worker" {
                let lines = text.lines().count();
                let header: String = text
                    .lines()
                    .take_while(|l| l.starts_with("//!"))
                    .collect::<Vec<_>>()
                    .join("\n");
                assert!(
                    lines <= 600 || header.contains("over 600 lines"),
                    "{}: {lines} lines; split it, or say at its top why it is over 600 lines",
                    f.display()
                );
            }
        }
    }
}
