//! The house keeps its shape: no room imports a room that imports it back
//! (directly or round a longer loop), and no file grows past what a reader
//! takes in at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms, by pipeline stage; plumbing (config, net, services, ...)
/// lies below them all.
const ROOMS: &[&str] = &[
    "intake", "queue", "egress", "feedback", "ses", "ops", "policy", "store",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Room → the rooms its code (comments aside) names as `crate::<room>`.
fn imports() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for room in ROOMS {
        let mut files = Vec::new();
        rust_files(&src.join(room), &mut files);
        let mut uses = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for other in ROOMS {
                    if other != room && code.contains(&format!("crate::{other}::")) {
                        uses.insert(*other);
                    }
                }
            }
        }
        graph.insert(*room, uses);
    }
    graph
}

#[test]
fn no_room_imports_round_a_loop() {
    let graph = imports();
    // Depth-first search for a path back to where it started.
    fn reaches(
        graph: &BTreeMap<&'static str, BTreeSet<&'static str>>,
        from: &'static str,
        to: &'static str,
        path: &mut Vec<&'static str>,
    ) -> bool {
        for next in &graph[from] {
            if path.contains(next) {
                continue;
            }
            path.push(next);
            if *next == to || reaches(graph, next, to, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    for room in ROOMS {
        let mut path = vec![*room];
        assert!(
            !reaches(&graph, room, room, &mut path),
            "an import loop between rooms: {} (imports: {graph:?})",
            path.join(" -> ")
        );
    }
}

#[test]
fn no_file_is_too_long_to_read_at_once() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 900).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split by concern: {long:?}");
}

/// Is this file there for tests only (not a module a reader looks up)?
fn test_only(path: &Path) -> bool {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    stem == "tests" || stem == "testing" || stem.ends_with("_tests")
}

/// Every module of the crate, as `room::module::...` paths.
fn module_paths() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .filter(|f| !test_only(f))
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).ok()?.with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let path = parts.join("::");
            (path != "lib" && path != "main").then_some(path)
        })
        .collect()
}

#[test]
fn the_layout_table_names_every_module_and_no_other() {
    let lib = include_str!("lib.rs");
    let listed: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .filter_map(|l| l.split_once(" |"))
        .filter_map(|(cell, _)| {
            let name = cell.trim_matches('*');
            let name = name.strip_prefix('`')?.strip_suffix('`')?;
            Some(name.to_string())
        })
        .collect();
    let modules = module_paths();
    let missing: Vec<_> = modules.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&modules).collect();
    assert!(
        missing.is_empty(),
        "lib.rs's layout does not say what these are: {missing:?}"
    );
    assert!(
        gone.is_empty(),
        "lib.rs's layout names modules that do not exist: {gone:?}"
    );
}
