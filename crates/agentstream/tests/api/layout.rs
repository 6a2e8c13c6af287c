//! The server library's layout, checked on every test run: no module
//! imports a module that imports it back (directly or through others), and
//! no source file holds more than about 600 lines of code outside its tests
//! (a module's long tests go in a `tests.rs` beside it, not deep in its file).
//! `cargo test -p agentstream --test api layout::` is the command to run.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Most lines of code (not blank, not a comment) a file may hold before
/// its `#[cfg(test)]` module.
const MAX_CODE_LINES: usize = 600;

/// Files of the binary, not of the library.
const BINARY_FILES: [&str; 3] = ["main.rs", "cli.rs", "client.rs"];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code before its tests, without blank and comment lines.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| !line.trim_start().starts_with("#[cfg(test)]"))
        .filter(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with("//")
        })
        .collect()
}

/// The top-level modules a piece of code names: `crate::NAME` and the first
/// name of each item of `crate::{…}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        names.insert(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

/// Every cycle of the graph, each as the modules on it.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // A module is on a cycle with another when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(module) = todo.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (module, reaches) in &reached {
        if !reaches.contains(*module) {
            continue;
        }
        let component: Vec<String> = reaches
            .iter()
            .filter(|other| reached.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        found.insert(component);
    }
    found.into_iter().collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back_and_no_file_is_too_long() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        if BINARY_FILES.contains(&first) || first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_lines(&text);
        // A module's tests, in a `tests.rs` of its own beside it.
        let tests_only = file.file_name().is_some_and(|name| name == "tests.rs");
        if !tests_only && code.len() > MAX_CODE_LINES {
            too_long.push(format!("{} ({} lines)", relative.display(), code.len()));
        }
        let named = named_modules(&code.join("\n"));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(named.into_iter().filter(|m| *m != module));
    }
    assert!(
        graph.len() > 5,
        "the library's modules were found: {graph:?}"
    );
    assert!(graph["runs"].contains("agent"), "edges are read: {graph:?}");
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:?}"
    );
    assert!(
        too_long.is_empty(),
        "files over {MAX_CODE_LINES} lines of code: {too_long:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle_and_grouped_imports() {
    assert_eq!(
        named_modules("use crate::{a::X, b, c::{d, e}};\nlet y = crate::f::g();"),
        ["a", "b", "c", "f"].map(str::to_owned).into()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
}
