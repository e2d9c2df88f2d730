//! Pins the layering that `lib.rs` states ("Layers"): read from that list, checked against every `crate::` and
//! `super::` path of the sources, grouped `use` lists included. A module may name only modules of the layers before
//! its own; inside a module with layered sub-modules (`realtime`), the same holds for its sub-modules. Comments and
//! string literals are skipped; test modules are checked too (a `super::` there names the module under test).

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

/// Module names, one list per layer, lowest first.
type Layers = Vec<Vec<String>>;

/// The layers `lib.rs` states, and those of the modules whose sub-modules are layered too.
struct Layering {
    modules: Layers,
    nested: HashMap<String, Layers>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The numbered list under `//! ## Layers` in `lib.rs`: `1. [`a`], [`b`]: what they are` names a layer's modules
/// (before the colon); a list nested under a one-module layer layers that module's sub-modules.
fn layering() -> Layering {
    let lib = read(&src().join("lib.rs"));
    let mut layering = Layering {
        modules: Vec::new(),
        nested: HashMap::new(),
    };
    let mut in_section = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        if let Some(heading) = doc.trim_start().strip_prefix("## ") {
            in_section = heading.trim() == "Layers";
            continue;
        }
        let text = doc.trim_start();
        let Some(item) = numbered(text) else {
            continue;
        };
        if !in_section {
            continue;
        }
        let names: Vec<String> = item
            .split(':')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|n| n.trim().trim_matches(['[', ']', '`']).to_owned())
            .collect();
        match doc.len() - text.len() {
            1 => layering.modules.push(names),
            4 => {
                let parent = match layering.modules.last().map(Vec::as_slice) {
                    Some([one]) => one.clone(),
                    other => {
                        panic!("a nested layer under {other:?}: nest under a one-module layer")
                    }
                };
                layering.nested.entry(parent).or_default().push(names);
            }
            _ => panic!("lib.rs, Layers: unexpected indentation of {line:?}"),
        }
    }
    assert!(
        !layering.modules.is_empty(),
        "no `## Layers` list found in lib.rs"
    );
    layering
}

/// `12. rest` gives `rest`.
fn numbered(text: &str) -> Option<&str> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    (digits > 0).then_some(())?;
    text[digits..].strip_prefix(". ")
}

/// The layer of `module` in `layers`.
fn layer_of(layers: &Layers, module: &str) -> Option<usize> {
    layers.iter().position(|l| l.iter().any(|m| m == module))
}

/// Rust source reduced to tokens: identifiers, `::`, and single punctuation characters, without comments, string
/// literals, char literals and lifetimes.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = after_string(&c, i + 1);
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime's quote.
            i = match (at(i + 1), at(i + 2)) {
                ('\\', _) => (i + 3..c.len())
                    .find(|&j| c[j] == '\'')
                    .map_or(c.len(), |j| j + 1),
                (_, '\'') => i + 3,
                _ => i + 1,
            };
        } else if ident(ch) {
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                ("r" | "br", '"' | '#') => i = after_raw_string(&c, i),
                ("b", '"') => i = after_string(&c, i + 1),
                ("b", '\'') => {}
                _ => out.push(word),
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push("::".to_owned());
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

/// Past the closing quote of a string whose contents start at `i`.
fn after_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Past a raw string whose `#`s or opening quote are at `i`.
fn after_raw_string(c: &[char], mut i: usize) -> usize {
    let hashes = c[i..].iter().take_while(|&&ch| ch == '#').count();
    i += hashes + 1;
    while i < c.len() {
        if c[i] == '"'
            && c[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

fn is_ident(token: &str) -> bool {
    token.starts_with(|c: char| c == '_' || c.is_alphabetic())
}

/// The paths of one path or `use` tree starting at `t[*i]`, each as its segments: `a::{b, c::d}` gives `a::b` and
/// `a::c::d`.
fn tree(t: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    loop {
        match t.get(*i).map(String::as_str) {
            Some("{") => {
                *i += 1;
                loop {
                    if matches!(t.get(*i).map(String::as_str), Some("}") | None) {
                        *i += 1;
                        return;
                    }
                    tree(t, i, &path, out);
                    // Past a rename (`as x`) to the next item.
                    while let Some(token) = t.get(*i) {
                        if token == "}" {
                            break;
                        }
                        *i += 1;
                        if token == "," {
                            break;
                        }
                    }
                }
            }
            Some(segment) if is_ident(segment) => {
                path.push(segment.to_owned());
                *i += 1;
                if t.get(*i).map(String::as_str) == Some("::") {
                    *i += 1;
                    continue;
                }
                out.push(path);
                return;
            }
            _ => {
                out.push(path);
                return;
            }
        }
    }
}

/// Every `crate::` and `super::` path of `code`, with the inline module (`mod tests { .. }`) it is in.
fn paths(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let t = tokens(code);
    let mut found = Vec::new();
    // Inline modules open around the current token, with the brace depth inside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "mod" if t.get(i + 2).map(String::as_str) == Some("{") => {
                inline.push((t[i + 1].clone(), depth + 1));
            }
            "crate" | "super"
                if t.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || t[i - 1] != "$") =>
            {
                let within: Vec<String> = inline.iter().map(|(m, _)| m.clone()).collect();
                let mut trees = Vec::new();
                tree(&t, &mut i, &[], &mut trees);
                found.extend(trees.into_iter().map(|p| (within.clone(), p)));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The absolute module path `path` names from module `module`.
fn resolve(module: &[String], path: &[String]) -> Vec<String> {
    let (mut absolute, mut rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        _ => (module.to_vec(), path),
    };
    while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
        absolute.pop();
        rest = tail;
    }
    absolute.extend(rest.iter().filter(|s| *s != "self").cloned());
    absolute
}

/// What a module file re-exports: item name to the child module it comes from (`pub use node::NodeInfo`).
fn reexports(file: &Path) -> HashMap<String, String> {
    let t = tokens(&read(file));
    let mut map = HashMap::new();
    for i in 0..t.len().saturating_sub(2) {
        if t[i] == "pub" && t[i + 1] == "use" {
            let mut paths = Vec::new();
            tree(&t, &mut (i + 2), &[], &mut paths);
            for p in paths {
                if let (Some(module), Some(item)) = (p.first(), p.last()) {
                    map.insert(item.clone(), module.clone());
                }
            }
        }
    }
    map
}

/// The `pub mod` declarations of a module file.
fn declared(file: &Path) -> BTreeSet<String> {
    let t = tokens(&read(file));
    t.windows(4)
        .filter(|w| w[0] == "pub" && w[1] == "mod" && w[3] == ";")
        .map(|w| w[2].clone())
        .collect()
}

/// The `.rs` files of module `name` of directory `dir` (`name.rs`, or everything under `name/`).
fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = dir.join(format!("{name}.rs"));
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![dir.join(name)];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module path of a source file: `src/realtime/auth/mod.rs` is `realtime::auth`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src()).unwrap().with_extension("");
    let mut module: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if module.last().is_some_and(|m| m == "mod") {
        module.pop();
    }
    module
}

/// Checks one use of `to` (an absolute path) by module `from` at one level: `layers` order the modules of that level,
/// `reexported` maps the parent's re-exported items to their modules.
fn check(
    layers: &Layers,
    reexported: &HashMap<String, String>,
    from: &str,
    to: &str,
) -> Result<(), String> {
    let to = reexported.get(to).map_or(to, String::as_str);
    if from == to {
        return Ok(());
    }
    match (layer_of(layers, from), layer_of(layers, to)) {
        (Some(a), Some(b)) if a > b => Ok(()),
        (Some(a), Some(b)) => Err(format!(
            "{from} (layer {}) uses {to} (layer {})",
            a + 1,
            b + 1
        )),
        _ => Err(format!("{from} uses {to}, which is in no layer")),
    }
}

/// Every use of a module that is not in an earlier layer, as `file: why`.
fn violations(layering: &Layering) -> Vec<String> {
    let root = src();
    let top_reexports = reexports(&root.join("lib.rs"));
    let mut found = Vec::new();
    for module in layering.modules.iter().flatten() {
        let nested = layering.nested.get(module);
        let nested_reexports = nested.map(|_| reexports(&root.join(module).join("mod.rs")));
        for file in files(&root, module) {
            let file_module = module_of(&file);
            let code = read(&file);
            for (within, path) in paths(&code) {
                let mut from = file_module.clone();
                from.extend(within);
                let to = resolve(&from, &path);
                let Some(first) = to.first() else {
                    continue;
                };
                let shown = || {
                    let relative = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                    format!("{}: {}", relative.display(), path.join("::"))
                };
                let top = check(&layering.modules, &top_reexports, module, first);
                if let Err(e) = top {
                    found.push(format!("{}: {e}", shown()));
                    continue;
                }
                // Inside a layered module: its sub-modules' order (its own root file may use any of them).
                let same = top_reexports.get(first).unwrap_or(first) == module;
                if let (true, Some(layers), Some(reexported), [_, from_sub, ..], [_, to_sub, ..]) = (
                    same,
                    nested,
                    &nested_reexports,
                    file_module.as_slice(),
                    to.as_slice(),
                ) && let Err(e) = check(layers, reexported, from_sub, to_sub)
                {
                    found.push(format!("{}: {module}::{e}", shown()));
                }
            }
        }
    }
    found
}

#[test]
fn every_module_has_one_layer() {
    let layering = layering();
    let mut all: Vec<&String> = layering.modules.iter().flatten().collect();
    let listed: BTreeSet<String> = all.iter().map(|m| m.to_string()).collect();
    assert_eq!(listed.len(), all.len(), "a module is in two layers");
    assert_eq!(listed, declared(&src().join("lib.rs")), "lib.rs, Layers");
    for (parent, layers) in &layering.nested {
        all = layers.iter().flatten().collect();
        let listed: BTreeSet<String> = all.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            listed.len(),
            all.len(),
            "a module of {parent} is in two layers"
        );
        let file = src().join(parent).join("mod.rs");
        assert_eq!(listed, declared(&file), "lib.rs, Layers of {parent}");
    }
    assert!(layering.nested.contains_key("realtime"));
}

#[test]
fn modules_use_only_modules_of_earlier_layers() {
    let found = violations(&layering());
    assert!(
        found.is_empty(),
        "uses against the layering of lib.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn paths_are_read_from_code_only_grouped_ones_included() {
    let code = r####"
        //! [`crate::doc`] is no use
        use crate::{a::{b, c::D}, e, StartError as S};
        use super::{f, super::g::H};
        fn x<'a>(s: &'a str) -> char { let _ = "crate::string"; let _ = r#"crate::raw"#; '"' }
        /* crate::comment /* nested */ crate::still */
        pub(crate) fn y() { crate::i::j(); $crate::macro_path(); }
        mod tests { use super::*; use crate::k::L; }
    "####;
    let found: Vec<(String, String)> = paths(code)
        .into_iter()
        .map(|(within, p)| (within.join("::"), p.join("::")))
        .collect();
    let expected = [
        ("", "crate::a::b"),
        ("", "crate::a::c::D"),
        ("", "crate::e"),
        ("", "crate::StartError"),
        ("", "super::f"),
        ("", "super::super::g::H"),
        ("", "crate::i::j"),
        ("tests", "super"),
        ("tests", "crate::k::L"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(w, p)| (w.to_string(), p.to_string()))
        .collect();
    assert_eq!(found, expected);
    let module = ["realtime".to_owned(), "events".to_owned()];
    let path = |p: &str| p.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        resolve(&module, &path("super::node::NodeInfo")),
        path("realtime::node::NodeInfo")
    );
    assert_eq!(resolve(&module, &path("crate::http")), path("http"));
}
