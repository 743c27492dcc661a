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
