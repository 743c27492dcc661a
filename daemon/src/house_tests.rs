//! The house keeps its shape: no top-level module imports one that imports
//! it back (directly or round a longer loop), no file grows past what a
//! reader takes in at once, and lib.rs's layout table names every module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module: a file or a folder of `src` (lib.rs and main.rs
/// aside).
fn top_level_modules(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(src).expect("read_dir").flatten() {
        let path = entry.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let module = path.is_dir()
            || (path.extension().is_some_and(|e| e == "rs")
                && !matches!(name, "lib" | "main")
                && !test_only(&path));
        if module {
            out.push(name.to_string());
        }
    }
    out.sort();
    out
}

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

/// Module → the other top-level modules its code (comments and test-only
/// files aside) names as `crate::<module>`, each with one place it does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn imports() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        let mut uses = BTreeMap::new();
        for file in files.iter().filter(|f| !test_only(f)) {
            let text = std::fs::read_to_string(file).expect("read");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for other in modules.iter().filter(|o| *o != module) {
                    let named = code
                        .match_indices(&format!("crate::{other}"))
                        .any(|(at, m)| {
                            !code[at + m.len()..]
                                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                        });
                    if named {
                        uses.entry(other.clone())
                            .or_insert_with(|| format!("{}:{}", file.display(), n + 1));
                    }
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A loop of imports, as the modules on it in order (the first again at
/// the end), if there is one.
fn find_loop(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_string());
            return Some(found);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flat_map(|u| u.keys()) {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut Vec::new(), &mut done))
}

#[test]
fn a_loop_of_imports_is_found() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string(), String::new());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_loop(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    assert_eq!(
        find_loop(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert!(find_loop(&graph(&[("x", "y"), ("y", "y2"), ("y2", "y")])).is_some());
}

#[test]
fn no_module_imports_round_a_loop() {
    let graph = imports();
    assert!(graph.len() > 20, "modules found: {:?}", graph.keys());
    if let Some(found) = find_loop(&graph) {
        let steps: Vec<String> = found
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!("an import loop between modules:\n  {}", steps.join("\n  "));
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
