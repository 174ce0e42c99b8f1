//! `cargo xtask layers`: the module graph of `dvr-ebpf` and `dvr-userspace` (one node per
//! source file, an arrow for every path one file takes from another: `use` items, re-exports
//! and paths written out in code), printed floor by floor from the modules nothing depends
//! on down to the ones that depend on nothing. Every module must only call downwards, so any
//! circle (two files that reach each other) fails the command, naming the files and the
//! paths that tie them. `cargo xtask test` runs it first.
//!
//! It reads the sources as text: comments and test code (everything from a file's first
//! `#[cfg(test)]`, and modules declared under `#[cfg(test)]`) are left out; a path is
//! resolved to the longest module it names, so an item re-exported by a `mod.rs` counts as
//! that `mod.rs`'s.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The crates whose insides are checked: (name, crate root relative to the workspace).
const CRATES: [(&str, &str); 2] = [
    ("dvr-ebpf", "dvr-ebpf/src/main.rs"),
    ("dvr-userspace", "dvr-userspace/src/lib.rs"),
];

/// One source file of a crate.
struct Module {
    /// `a::b` (the root is `crate`).
    path: String,
    file: PathBuf,
    /// The code with comments, strings and test code removed.
    code: String,
    /// Names of the modules it declares (`mod x;`).
    children: BTreeSet<String>,
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    let mut circles = 0;
    for (name, lib) in CRATES {
        let graph = Graph::of(root, &root.join(lib)).with_context(|| format!("read {name}"))?;
        println!(
            "{name}: {} modules, from the top floor down",
            graph.modules.len()
        );
        for (floor, names) in graph.floors().iter().enumerate().rev() {
            println!("  floor {floor:2}  {}", names.join(", "));
        }
        for circle in graph.circles() {
            circles += 1;
            println!("  CIRCLE: {}", circle.join(" <-> "));
            for a in &circle {
                for (b, why) in graph.edges.get(a).into_iter().flatten() {
                    if circle.contains(b) {
                        let why: Vec<&str> = why.iter().map(String::as_str).collect();
                        println!("    {a} -> {b}: {}", why.join(", "));
                    }
                }
            }
        }
    }
    if circles > 0 {
        bail!(
            "{circles} import circle(s): move the item that closes each circle down a layer \
             (see docs/ARCHITECTURE.md)"
        );
    }
    println!("layers: no import circle");
    Ok(())
}

struct Graph {
    modules: BTreeMap<String, Module>,
    /// module -> module it takes paths from -> the paths.
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Graph {
    fn of(workspace: &Path, lib: &Path) -> anyhow::Result<Self> {
        let src = lib.parent().context("crate root has no directory")?;
        let mut modules = BTreeMap::new();
        collect(src, lib, "crate", &mut modules)?;
        let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for m in modules.values() {
            for reference in references(m) {
                let Some(target) = resolve(&modules, &reference) else {
                    continue;
                };
                if target != m.path && target != "crate" {
                    edges
                        .entry(m.path.clone())
                        .or_default()
                        .entry(target)
                        .or_default()
                        .insert(reference);
                }
            }
        }
        for m in modules.values_mut() {
            m.file = m
                .file
                .strip_prefix(workspace)
                .unwrap_or(&m.file)
                .to_path_buf();
        }
        Ok(Graph { modules, edges })
    }

    fn deps(&self, m: &str) -> impl Iterator<Item = &String> {
        self.edges.get(m).into_iter().flat_map(|e| e.keys())
    }

    /// Strongly connected components of more than one module (Tarjan).
    fn circles(&self) -> Vec<Vec<String>> {
        struct Tarjan<'g> {
            g: &'g Graph,
            index: BTreeMap<&'g str, usize>,
            low: BTreeMap<&'g str, usize>,
            stack: Vec<&'g str>,
            on_stack: BTreeSet<&'g str>,
            out: Vec<Vec<String>>,
        }
        impl<'g> Tarjan<'g> {
            fn visit(&mut self, v: &'g str) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                for w in self.g.deps(v) {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(lw));
                    } else if self.on_stack.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low[v];
                        self.low.insert(v, lv.min(iw));
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut scc = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack.remove(w);
                        scc.push(w.to_string());
                        if w == v {
                            break;
                        }
                    }
                    if scc.len() > 1 {
                        scc.sort();
                        self.out.push(scc);
                    }
                }
            }
        }
        let mut t = Tarjan {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for m in self.modules.keys() {
            if !t.index.contains_key(m.as_str()) {
                t.visit(m);
            }
        }
        t.out
    }

    /// Floor of every module: 0 for those that take nothing from another module, else one
    /// above the highest floor they take from (modules in a circle share a floor).
    fn floors(&self) -> Vec<Vec<String>> {
        let mut floor: BTreeMap<&str, usize> = BTreeMap::new();
        // Relax until stable; bounded by the module count (circles would loop forever).
        for _ in 0..=self.modules.len() {
            let mut changed = false;
            for m in self.modules.keys() {
                let f = self
                    .deps(m)
                    .filter(|d| !self.reach(d, m))
                    .map(|d| floor.get(d.as_str()).copied().unwrap_or(0) + 1)
                    .max()
                    .unwrap_or(0);
                if floor.get(m.as_str()) != Some(&f) {
                    floor.insert(m, f);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut floors: Vec<Vec<String>> = Vec::new();
        for (m, f) in floor {
            if m == "crate" {
                continue;
            }
            if floors.len() <= f {
                floors.resize(f + 1, Vec::new());
            }
            floors[f].push(self.modules[m].file.display().to_string());
        }
        floors
    }

    /// Whether `from` reaches `to` (to keep circles on one floor).
    fn reach(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                todo.extend(self.deps(&m).cloned());
            }
        }
        false
    }
}

/// Read `file` as module `path` and, recursively, the modules it declares.
fn collect(
    src: &Path,
    file: &Path,
    path: &str,
    out: &mut BTreeMap<String, Module>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let (code, declared, test_only) = strip(&text);
    let children: BTreeSet<String> = declared.difference(&test_only).cloned().collect();
    // Where this module's children live: `a/b.rs` and `a/b/mod.rs` keep them in `a/b/`;
    // the crate root keeps them beside it.
    let dir = if path == "crate" || file.file_name().is_some_and(|n| n == "mod.rs") {
        file.parent().unwrap_or(src).to_path_buf()
    } else {
        file.with_extension("")
    };
    for child in &children {
        let flat = dir.join(format!("{child}.rs"));
        let nested = dir.join(child).join("mod.rs");
        let child_file = if flat.exists() { flat } else { nested };
        let child_path = if path == "crate" {
            child.clone()
        } else {
            format!("{path}::{child}")
        };
        collect(src, &child_file, &child_path, out)?;
    }
    out.insert(
        path.to_string(),
        Module {
            path: path.to_string(),
            file: file.to_path_buf(),
            code,
            children,
        },
    );
    Ok(())
}

/// The code without comments, string contents and test code; the modules it declares; and
/// those declared under `#[cfg(test)]`.
fn strip(text: &str) -> (String, BTreeSet<String>, BTreeSet<String>) {
    let mut code = String::new();
    let mut declared = BTreeSet::new();
    let mut test_only = BTreeSet::new();
    let mut cfg_test = false;
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        if let Some(name) = mod_decl(l) {
            if cfg_test {
                test_only.insert(name.clone());
            }
            declared.insert(name);
            cfg_test = false;
            continue;
        }
        if cfg_test && (l.starts_with("mod ") || l.starts_with("pub(crate) mod ")) {
            // An inline test module: the rest of the file is test code.
            break;
        }
        if !l.starts_with("#[") {
            cfg_test = false;
        }
        code.push_str(&without_comment_and_strings(line));
        code.push('\n');
    }
    (code, declared, test_only)
}

/// `mod x;` / `pub mod x;` / `pub(crate) mod x;` -> `x`.
fn mod_decl(l: &str) -> Option<String> {
    let rest = l
        .strip_prefix("pub mod ")
        .or_else(|| l.strip_prefix("pub(crate) mod "))
        .or_else(|| l.strip_prefix("mod "))?;
    let name = rest.strip_suffix(';')?;
    is_ident(name).then(|| name.to_string())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn without_comment_and_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
                out.push('"');
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Every module path `m` refers to, absolute (`a::b::Item`).
fn references(m: &Module) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // `use` trees, expanded.
    let mut rest = m.code.as_str();
    while let Some(i) = find_word(rest, "use") {
        let after = &rest[i + 3..];
        let Some(end) = after.find(';') else { break };
        for p in expand(after[..end].trim()) {
            out.extend(absolute(m, &p));
        }
        rest = &after[end..];
    }
    // Paths written out in code: `crate::a::b`, `super::x`, `self::x`, `child::x`.
    let bytes = m.code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        if start_ok && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            let mut j = i;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b':')
            {
                j += 1;
            }
            let path = m.code[i..j].trim_end_matches(':');
            if path.contains("::") {
                out.extend(absolute(m, path));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(word) {
        let at = from + i;
        let before = s[..at].chars().next_back();
        let after = s[at + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e` (`self` in a group is the prefix).
fn expand(tree: &str) -> Vec<String> {
    // Without white space and `as` renames (`a as b,` -> `a,`).
    let mut cleaned = String::new();
    let mut tokens = tree.split_whitespace();
    while let Some(t) = tokens.next() {
        if t == "as" {
            let alias = tokens.next().unwrap_or("");
            cleaned.push_str(
                alias.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_'),
            );
        } else {
            cleaned.push_str(t);
        }
    }
    let tree = cleaned.strip_prefix("::").unwrap_or(&cleaned).to_string();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        match t.find('{') {
            None => {
                let full = match (prefix.is_empty(), t) {
                    (_, "self") => prefix.to_string(),
                    (true, _) => t.to_string(),
                    (false, _) => format!("{prefix}::{t}"),
                };
                out.push(full);
            }
            Some(open) => {
                let head = t[..open].trim_end_matches("::");
                let prefix = match (prefix.is_empty(), head.is_empty()) {
                    (true, _) => head.to_string(),
                    (false, true) => prefix.to_string(),
                    (false, false) => format!("{prefix}::{head}"),
                };
                let inner = t[open + 1..].strip_suffix('}').unwrap_or(&t[open + 1..]);
                let mut depth = 0;
                let mut start = 0;
                for (k, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            if !inner[start..k].is_empty() {
                                go(&prefix, &inner[start..k], out);
                            }
                            start = k + 1;
                        }
                        _ => {}
                    }
                }
                if !inner[start..].is_empty() {
                    go(&prefix, &inner[start..], out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// A path as written in module `m`, made absolute (without `crate::`); `None` for paths into
/// other crates.
fn absolute(m: &Module, p: &str) -> Option<String> {
    let here: Vec<&str> = if m.path == "crate" {
        Vec::new()
    } else {
        m.path.split("::").collect()
    };
    let mut segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
    let first = *segs.first()?;
    let mut base: Vec<&str> = match first {
        "crate" => {
            segs.remove(0);
            Vec::new()
        }
        "self" => {
            segs.remove(0);
            here.clone()
        }
        "super" => {
            let mut b = here.clone();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        child if m.children.contains(child) => here.clone(),
        _ => return None,
    };
    base.extend(segs);
    Some(base.join("::"))
}

/// The module a path names: its longest prefix that is a module (`crate` for the root).
fn resolve(modules: &BTreeMap<String, Module>, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    for n in (1..=segs.len()).rev() {
        let candidate = segs[..n].join("::");
        if modules.contains_key(&candidate) {
            return Some(candidate);
        }
    }
    Some("crate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        assert_eq!(
            expand("crate::{a, b::{c, d::E as F}, f::{self}}"),
            vec!["crate::a", "crate::b::c", "crate::b::d::E", "crate::f"]
        );
        assert_eq!(expand("super::x::Y"), vec!["super::x::Y"]);
    }

    #[test]
    fn comments_and_strings_are_not_code() {
        let (code, declared, test_only) = strip(
            "use crate::a; // crate::b\nlet s = \"crate::c\";\nmod x;\n#[cfg(test)]\nmod testing;\n#[cfg(test)]\nmod tests {\n use crate::d;\n}\n",
        );
        assert!(code.contains("crate::a") && !code.contains("crate::b"));
        assert!(!code.contains("crate::c") && !code.contains("crate::d"));
        assert_eq!(declared.len(), 2);
        assert!(test_only.contains("testing"));
    }
}
