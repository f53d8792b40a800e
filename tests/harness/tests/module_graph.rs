//! The workspace's module structure: no import cycle between the modules of any crate, and no
//! non-test source file much over 800 lines without a reason stated at its top.
//!
//! Every `use` path and every inline `crate::…`, `super::…` and `self::…` path of a module's
//! non-test code is resolved to the deepest module it names. A reference from module `a::x` to
//! module `b::y` is an arrow between the siblings where their paths part (`a` → `b`, both
//! children of the crate root); arrows into a module's own descendants or ancestors are the
//! parent/child relation, not imports, and are left out. Each set of siblings must then form an
//! acyclic graph: within a crate, every arrow points one way.
//!
//! Run it with `cargo test -p test-harness --test module_graph`; a failure prints the cycle
//! with the file and line of every arrow in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files longer than this need a `// Longer than …: <reason>` line at their top.
const MAX_LINES: usize = 800;

/// One crate's modules, keyed by path (`[]` is the crate root), with their source files.
struct Crate {
    name: String,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

/// A resolved reference: from module, to module, where.
#[derive(Debug, Clone)]
struct Arrow {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}

/// Every library and binary crate of the workspace: each `src/lib.rs`, `src/main.rs` and
/// `src/bin/*.rs` under the member directories, with the modules declared below it.
fn crates() -> Vec<Crate> {
    let root = workspace_root();
    let mut found = Vec::new();
    for member in [
        "shared",
        "collectors",
        "exporters",
        "tests",
        "packaging",
        "dashboards",
    ] {
        let mut stack = vec![root.join(member)];
        while let Some(dir) = stack.pop() {
            let src = dir.join("src");
            if dir.join("Cargo.toml").is_file() && src.is_dir() {
                for crate_root in crate_roots(&src) {
                    found.push(load_crate(&root, &crate_root));
                }
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let name = entry.file_name();
                    if path.is_dir() && name != "target" && name != "src" && name != "tests" {
                        stack.push(path);
                    }
                }
            }
        }
    }
    assert!(
        found.len() >= 8,
        "too few crates found under {}",
        root.display()
    );
    found
}

/// The crate roots under a package's `src`: `lib.rs`, `main.rs`, and each binary of `bin/`,
/// a file (`bin/x.rs`) or a directory with its modules (`bin/x/main.rs`), as Cargo finds
/// them.
fn crate_roots(src: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir(src.join("bin")) {
        let mut bins: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| {
                if p.is_dir() {
                    Some(p.join("main.rs")).filter(|m| m.is_file())
                } else {
                    (p.extension().and_then(|e| e.to_str()) == Some("rs")).then_some(p)
                }
            })
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}

/// The crate rooted at `crate_root`, following `mod x;` declarations (test modules excluded).
fn load_crate(workspace: &Path, crate_root: &Path) -> Crate {
    let name = crate_root
        .strip_prefix(workspace)
        .unwrap()
        .display()
        .to_string();
    let mut modules = BTreeMap::new();
    let mut pending = vec![(Vec::<String>::new(), crate_root.to_owned())];
    while let Some((path, file)) = pending.pop() {
        let text = std::fs::read_to_string(&file).unwrap();
        // Children of `a.rs` live in `a/`, of `a/mod.rs`, `lib.rs` and `main.rs` beside it.
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().unwrap().to_owned(),
            _ if path.is_empty() => file.parent().unwrap().to_owned(),
            _ => file.with_extension(""),
        };
        for child in declared_modules(&non_test_code(&text)) {
            let candidates = [
                dir.join(format!("{child}.rs")),
                dir.join(&child).join("mod.rs"),
            ];
            if let Some(child_file) = candidates.into_iter().find(|p| p.is_file()) {
                let mut child_path = path.clone();
                child_path.push(child);
                pending.push((child_path, child_file));
            }
        }
        modules.insert(path, file);
    }
    Crate { name, modules }
}

/// The source without `#[cfg(test)]` items: from such an attribute to the end of the item it
/// marks (a `mod … { … }` block or a `mod …;` declaration, by brace counting).
fn non_test_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        // Keep line numbers: blank the item instead of dropping it.
        out.extend(after[..end].chars().filter(|&c| c == '\n'));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `mod x;` declarations (out-of-line modules) in `code`.
fn declared_modules(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line
                .strip_prefix("pub ")
                .or_else(|| line.strip_prefix("pub(crate) "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_owned())
        })
        .collect()
}

/// Every path `code` names that starts with `crate`, `super` or `self`, with its line: `use`
/// trees expanded (`use crate::{a::X, b::{c, d}}` gives `crate::a::X`, `crate::b::c`, …) and
/// inline paths in expressions and types.
fn referenced_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    // Line comments (doc comments included) hold prose and examples, not references.
    let code: String = code
        .lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.as_str();
    let mut paths = Vec::new();
    let line_of = |offset: usize| code[..offset].matches('\n').count() + 1;
    // `use` trees.
    let mut search = 0;
    while let Some(found) = code[search..].find("use ") {
        let start = search + found;
        search = start + 4;
        let boundary = code[..start]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if !boundary {
            continue;
        }
        let Some(end) = code[start..].find(';') else {
            break;
        };
        for path in expand_use_tree(&code[start + 4..start + end]) {
            paths.push((line_of(start), path));
        }
        search = start + end;
    }
    // Inline paths.
    for keyword in ["crate::", "super::", "self::"] {
        let mut search = 0;
        while let Some(found) = code[search..].find(keyword) {
            let start = search + found;
            search = start + keyword.len();
            let boundary = code[..start]
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
            if !boundary {
                continue;
            }
            let path: Vec<String> = code[start..]
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            paths.push((line_of(start), path));
        }
    }
    paths
        .into_iter()
        .filter(|(_, p)| {
            matches!(
                p.first().map(String::as_str),
                Some("crate" | "super" | "self")
            )
        })
        .collect()
}

/// The leaf paths of a `use` tree, e.g. `crate::{a::X, b::{c, d as e}}`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim_matches(',');
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = tree[..open]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let mut base = prefix.to_vec();
            base.extend(head);
            let mut depth = 0usize;
            let mut part_start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    ',' if depth == 0 => {
                        expand(&base, &inner[part_start..i], out);
                        part_start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&base, &inner[part_start..], out);
        } else {
            let mut path = prefix.to_vec();
            let tree = tree.split('@').next().unwrap_or(tree);
            path.extend(
                tree.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            out.push(path);
        }
    }
    // Whitespace dropped, `as` renames marked with `@` (`d as e` → `d@e`).
    let tree: String = tree
        .split_whitespace()
        .map(|t| if t == "as" { "@" } else { t })
        .collect();
    let mut out = Vec::new();
    expand(&[], &tree, &mut out);
    out
}

/// The deepest module of `krate` that `path` (seen from module `from`) names.
fn resolve(krate: &Crate, from: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String>;
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &rest[1..];
        }
        Some("self") => {
            base = from.to_vec();
            rest = &rest[1..];
        }
        Some("super") => {
            base = from.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut deepest = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if krate.modules.contains_key(&base) {
            deepest = base.clone();
        } else {
            break;
        }
    }
    Some(deepest)
}

/// The arrows between sibling modules of `krate`.
fn sibling_arrows(krate: &Crate) -> Vec<(Vec<String>, Arrow)> {
    let mut arrows = Vec::new();
    let mut seen = BTreeSet::new();
    for (module, file) in &krate.modules {
        let code = non_test_code(&std::fs::read_to_string(file).unwrap());
        for (line, path) in referenced_paths(&code) {
            let Some(target) = resolve(krate, module, &path) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // Own ancestor or descendant.
            }
            let parent = module[..common].to_vec();
            if !seen.insert((module.clone(), line, target.clone())) {
                continue; // A `use` line seen both as a tree and inline.
            }
            arrows.push((
                parent,
                Arrow {
                    from: module[..=common].to_vec(),
                    to: target[..=common].to_vec(),
                    at: format!("{}:{line} uses {}", file.display(), path.join("::")),
                },
            ));
        }
    }
    arrows
}

/// The import cycles among `arrows` (all between children of one module): each strongly
/// connected set of two or more modules, with the arrows inside it.
fn find_cycles(arrows: &[Arrow]) -> Vec<Vec<Arrow>> {
    let nodes: BTreeSet<&Vec<String>> = arrows.iter().flat_map(|a| [&a.from, &a.to]).collect();
    // Which modules each module reaches (a handful of siblings: the closure is cheap).
    let reaches = |start: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for arrow in arrows.iter().filter(|a| &a.from == node) {
                if seen.insert(&arrow.to) {
                    stack.push(&arrow.to);
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut assigned = BTreeSet::new();
    let mut cycles = Vec::new();
    for node in &nodes {
        if assigned.contains(node) || !reach[node].contains(node) {
            continue;
        }
        let component: BTreeSet<&Vec<String>> = nodes
            .iter()
            .filter(|other| reach[node].contains(*other) && reach[*other].contains(*node))
            .copied()
            .collect();
        assigned.extend(component.iter().copied());
        cycles.push(
            arrows
                .iter()
                .filter(|a| component.contains(&a.from) && component.contains(&a.to))
                .cloned()
                .collect(),
        );
    }
    cycles
}

fn module_name(krate: &Crate, path: &[String]) -> String {
    if path.is_empty() {
        krate.name.clone()
    } else {
        path.join("::")
    }
}

#[test]
fn no_import_cycle_between_modules_of_any_crate() {
    let mut failures = Vec::new();
    for krate in crates() {
        let mut by_parent: BTreeMap<Vec<String>, Vec<Arrow>> = BTreeMap::new();
        for (parent, arrow) in sibling_arrows(&krate) {
            by_parent.entry(parent).or_default().push(arrow);
        }
        for (parent, arrows) in by_parent {
            for cycle in find_cycles(&arrows) {
                let names: BTreeSet<String> = cycle
                    .iter()
                    .flat_map(|a| [module_name(&krate, &a.from), module_name(&krate, &a.to)])
                    .collect();
                let detail: Vec<String> = cycle.iter().map(|a| format!("    {}", a.at)).collect();
                failures.push(format!(
                    "{} (in {}): {} import each other:\n{}",
                    krate.name,
                    module_name(&krate, &parent),
                    names.into_iter().collect::<Vec<_>>().join(", "),
                    detail.join("\n")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "import cycles between modules:\n{}",
        failures.join("\n")
    );
}

#[test]
fn long_source_files_state_why_at_their_top() {
    let mut failures = Vec::new();
    for krate in crates() {
        for file in krate.modules.values() {
            let text = std::fs::read_to_string(file).unwrap();
            let lines = non_test_code(&text)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            let head: String = text.lines().take(15).collect::<Vec<_>>().join("\n");
            if lines > MAX_LINES && !head.contains("Longer than") {
                failures.push(format!("{}: {lines} non-test lines", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "source files over {MAX_LINES} non-blank, non-test lines without a `Longer than …: <reason>` \
         note in their first 15 lines:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_checker_sees_a_cycle_and_expands_use_trees() {
    assert_eq!(
        expand_use_tree("crate::{a::X, b::{c, d as e},\n f}"),
        vec![
            vec!["crate", "a", "X"],
            vec!["crate", "b", "c"],
            vec!["crate", "b", "d"],
            vec!["crate", "f"],
        ]
    );
    let krate = Crate {
        name: "k".into(),
        modules: [
            vec![],
            vec!["a".into()],
            vec!["b".into()],
            vec!["b".into(), "x".into()],
        ]
        .into_iter()
        .map(|p| (p, PathBuf::new()))
        .collect(),
    };
    let from_x = vec!["b".to_owned(), "x".to_owned()];
    assert_eq!(
        resolve(
            &krate,
            &from_x,
            &["super".into(), "super".into(), "a".into(), "T".into()]
        ),
        Some(vec!["a".to_owned()])
    );
    let arrow = |from: &str, to: &str| Arrow {
        from: vec![from.to_owned()],
        to: vec![to.to_owned()],
        at: String::new(),
    };
    assert!(find_cycles(&[arrow("a", "b"), arrow("b", "c")]).is_empty());
    let cycles = find_cycles(&[
        arrow("a", "b"),
        arrow("b", "c"),
        arrow("c", "a"),
        arrow("c", "d"),
        arrow("d", "e"),
        arrow("e", "d"),
    ]);
    assert_eq!(cycles.len(), 2);
    assert_eq!(cycles[0].len(), 3);
    assert_eq!(cycles[1].len(), 2);
}

#[test]
fn binaries_in_directories_are_crates_of_their_own() {
    let src = tempfile::tempdir().unwrap();
    let bin = src.path().join("bin");
    std::fs::create_dir_all(bin.join("tool")).unwrap();
    for file in [
        "lib.rs",
        "bin/one.rs",
        "bin/tool/main.rs",
        "bin/tool/part.rs",
    ] {
        std::fs::write(src.path().join(file), "").unwrap();
    }
    std::fs::write(bin.join("notes.txt"), "").unwrap();
    assert_eq!(
        crate_roots(src.path()),
        vec![
            src.path().join("lib.rs"),
            bin.join("one.rs"),
            bin.join("tool/main.rs"),
        ]
    );
}
