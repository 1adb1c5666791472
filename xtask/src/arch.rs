//! `cargo xtask arch`: the architecture's two measures, repeatable by anyone (and checked by
//! `cargo xtask test`).
//!
//! 1. **Long functions.** Every `fn` with a body longer than [`MAX_FN_LINES`] lines, counted from
//!    the line of `fn` to the line of its closing brace, both included (the doc comment and the
//!    attributes above it do not count). Free functions, methods, default trait methods and
//!    nested functions all count, as do the `fn`s written in a macro's body. Measured in every
//!    workspace crate's `src/**/*.rs` and `build.rs`, test code excepted: the crates' `tests/` and
//!    `benches/` directories are not read, and neither is a module declared under `#[cfg(test)]`
//!    nor anything inside an item marked `#[cfg(test)]`, `#[test]` or `#[tokio::test]` (any
//!    attribute whose path ends in `test`).
//! 2. **Import circles.** Within one crate, file A imports file B when code in A names a path that
//!    resolves to B's module: a `use crate::..`, `use super::..` or `use self::..` tree (groups,
//!    globs and renames expanded), or a `crate::`, `super::`, `self::` (`$crate::` in a macro)
//!    path anywhere else. `self` and `super` are relative to the module the path is written in. A
//!    path resolves to the deepest module along it that exists: `crate::a::b::Item` is
//!    `src/a/b.rs` or `src/a/b/mod.rs`, else `src/a.rs` or `src/a/mod.rs`, else the crate root; an
//!    inline module (`mod m { .. }`) belongs to its file. A parent *declaring* its child
//!    (`mod x;`) is not an import, and neither is a parent naming its child by bare name
//!    (`x::f()`): only `crate`, `super` and `self` paths count. `pub(in crate::x)` visibilities
//!    and test code are not imports either. Every strongly connected component of more than one
//!    file is a circle; the report gives one shortest cycle through it, with the line creating
//!    each of its imports.
//!
//! A crate is a directory whose `Cargo.toml` has a `[package]`. Its module tree is followed from
//! its targets' roots (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, `src/bin/*/main.rs` and the
//! `path = "...rs"` of its `[lib]` and `[[bin]]`) through `mod x;` to `x.rs` or `x/mod.rs`; a
//! `#[path]` is followed only outside inline modules. Files are parsed with `syn`; the tokens it
//! leaves unparsed (macro bodies, `macro_rules!` included) are scanned token by token for `fn name
//! .. { .. }` and for `crate::`/`super::`/`self::`/`$crate::` paths.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, VecDeque, btree_map::Entry},
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use proc_macro2::{Delimiter, Spacing, Span, TokenStream, TokenTree};
use syn::{
    Attribute, Meta, UseTree,
    ext::IdentExt as _,
    visit::{self, Visit},
};

use crate::workspace_root;

/// Functions longer than this many lines are reported.
const MAX_FN_LINES: usize = 120;

/// Runs both measures on the whole workspace and prints the report; fails (with the one-line
/// summary as the error) if a function is too long or a crate has an import circle.
pub(crate) fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let crates = workspace_crates(&root)?;
    let mut sources = Sources::default();
    let mut long = Vec::new();
    let mut circle_count = 0;
    for dir in &crates {
        let trees = module_trees(&mut sources, dir)?;
        let (files, graph) = import_graph(&mut sources, &trees)?;
        let circles = import_circles(&files, &graph);
        print_circles(&root, dir, &circles, &graph, &sources);
        circle_count += circles.len();
        long.extend(long_functions(&mut sources, dir, &trees)?);
    }
    long.sort_by_key(|(file, function)| (Reverse(function.lines), file.clone(), function.line));
    if long.is_empty() {
        println!("functions over {MAX_FN_LINES} lines: none");
    } else {
        println!("functions over {MAX_FN_LINES} lines:");
        for (file, function) in &long {
            let (line, name, lines) = (function.line, &function.name, function.lines);
            println!("  {}:{line} {name} {lines}", relative(&root, file));
        }
    }
    let summary = format!(
        "arch: {} over {MAX_FN_LINES} lines, {} in {}",
        plural(long.len(), "function"),
        plural(circle_count, "import circle"),
        plural(crates.len(), "crate"),
    );
    anyhow::ensure!(long.is_empty() && circle_count == 0, "{summary}");
    println!("{summary}");
    Ok(())
}

/// A function with a body, outside test code.
#[derive(Debug, Clone)]
struct Function {
    /// The line of its `fn`.
    line: usize,
    name: String,
    /// From the line of `fn` to the line of the closing brace, both included.
    lines: usize,
}

/// A path naming a module of the crate itself (`crate::..`, `super::..`, `self::..`,
/// `$crate::..`), outside test code.
#[derive(Debug)]
struct Reference {
    /// The inline modules (`mod m { .. }`) it is written in, from the top of its file.
    inline: Vec<String>,
    /// As written, groups expanded: `["super", "store", "Store"]`; a glob ends in `*`.
    segments: Vec<String>,
    line: usize,
}

/// A `mod x;` declaration: its file is `x.rs` or `x/mod.rs` (or its `#[path]`).
#[derive(Debug)]
struct ModDecl {
    /// The inline modules it is declared in, from the top of its file.
    inline: Vec<String>,
    name: String,
    /// Declared in test code (`#[cfg(test)] mod tests;`).
    test: bool,
    /// Its `#[path = "..."]`, if it has one.
    path: Option<String>,
}

/// What one file holds, for both measures.
#[derive(Debug, Default)]
struct FileFacts {
    functions: Vec<Function>,
    references: Vec<Reference>,
    decls: Vec<ModDecl>,
    /// The paths of its inline modules (`mod m { .. }`), from the top of the file.
    inline_mods: Vec<Vec<String>>,
    /// Its source lines, to quote the line creating an import.
    lines: Vec<String>,
}

/// The files read so far, each parsed once.
#[derive(Debug, Default)]
struct Sources(BTreeMap<PathBuf, FileFacts>);

impl Sources {
    /// The facts of `path`, reading and parsing it the first time.
    fn get(&mut self, path: &Path) -> anyhow::Result<&FileFacts> {
        if let Entry::Vacant(slot) = self.0.entry(path.to_owned()) {
            slot.insert(scan_file(path)?);
        }
        Ok(&self.0[path])
    }

    /// Line `line` (from 1) of a file already read, trimmed.
    fn line(&self, path: &Path, line: usize) -> &str {
        self.0
            .get(path)
            .and_then(|facts| facts.lines.get(line.saturating_sub(1)))
            .map_or("", |text| text.trim())
    }
}

/// Reads and parses one file and collects its [`FileFacts`].
fn scan_file(path: &Path) -> anyhow::Result<FileFacts> {
    let source = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file = syn::parse_file(&source).map_err(|e| {
        let line = e.span().start().line;
        anyhow::anyhow!("{}:{line} does not parse: {e}", path.display())
    })?;
    let mut scanner = Scanner::default();
    scanner.visit_file(&file);
    scanner.facts.lines = source.lines().map(str::to_owned).collect();
    Ok(scanner.facts)
}

/// Walks one parsed file and collects its [`FileFacts`].
#[derive(Debug, Default)]
struct Scanner {
    facts: FileFacts,
    /// The inline modules the walk is in.
    inline: Vec<String>,
    /// Whether the walk is in test code.
    test: bool,
}

impl Scanner {
    /// Runs `walk` in test code if `attrs` mark test code (or it already is).
    fn scoped(&mut self, attrs: &[Attribute], walk: impl FnOnce(&mut Self)) {
        let outer = self.test;
        self.test = outer || attrs.iter().any(is_test_attribute);
        walk(self);
        self.test = outer;
    }

    /// Records a function from the line of its `fn` to the line of its closing brace.
    fn function(&mut self, name: &syn::Ident, fn_token: Span, close_brace: Span) {
        if !self.test {
            let line = line_of(fn_token);
            self.facts.functions.push(Function {
                line,
                name: name.unraw().to_string(),
                lines: line_of(close_brace).saturating_sub(line) + 1,
            });
        }
    }

    /// Records `segments` if it names a module of this crate, outside test code.
    fn reference(&mut self, segments: Vec<String>, line: usize) {
        let own = segments
            .first()
            .is_some_and(|first| matches!(first.as_str(), "crate" | "$crate" | "self" | "super"));
        if own && !self.test {
            let inline = self.inline.clone();
            self.facts.references.push(Reference {
                inline,
                segments,
                line,
            });
        }
    }

    /// Scans tokens syn leaves unparsed (a macro's body, an attribute's arguments) for the
    /// functions and the `crate::`/`super::`/`self::`/`$crate::` paths written in them.
    fn scan_tokens(&mut self, tokens: TokenStream, delimiter: Delimiter) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            if let Some((after, inner)) = test_attribute_at(&tokens, i) {
                // `#![cfg(test)]` makes the rest test code, `#[test]` the item it is on.
                i = if inner {
                    tokens.len()
                } else {
                    item_end(&tokens, after)
                };
                continue;
            }
            match &tokens[i] {
                TokenTree::Group(group) => self.scan_tokens(group.stream(), group.delimiter()),
                TokenTree::Ident(ident) if ident == "fn" => self.token_function(&tokens, i),
                _ => {}
            }
            let Some((segments, after)) = path_at(&tokens, i) else {
                i += 1;
                continue;
            };
            // `pub(in crate::x)` is a visibility, not an import.
            let visibility = i == 1
                && delimiter == Delimiter::Parenthesis
                && matches!(&tokens[0], TokenTree::Ident(ident) if ident == "in");
            if !visibility {
                self.reference(segments, line_of(tokens[i].span()));
            }
            i = after;
        }
    }

    /// Records `fn name .. { .. }` written at `tokens[i]` (`fn $name` in a `macro_rules!` has no
    /// name yet and is skipped).
    fn token_function(&mut self, tokens: &[TokenTree], i: usize) {
        let Some(TokenTree::Ident(name)) = tokens.get(i + 1) else {
            return;
        };
        let body = tokens[i + 2..]
            .iter()
            .find_map(|token| match token {
                TokenTree::Group(group) if group.delimiter() == Delimiter::Brace => {
                    Some(Some(group))
                }
                TokenTree::Punct(punct) if punct.as_char() == ';' => Some(None),
                _ => None,
            })
            .flatten();
        if let Some(body) = body {
            self.function(name, tokens[i].span(), body.span_close());
        }
    }
}

/// `Visit` methods that only mark test code from the node's attributes, then walk it as usual.
macro_rules! test_scoped {
    ($ast:lifetime; $($method:ident($node:ty)),* $(,)?) => {$(
        fn $method(&mut self, node: &$ast $node) {
            self.scoped(&node.attrs, |v| visit::$method(v, node));
        }
    )*};
}

impl<'ast> Visit<'ast> for Scanner {
    test_scoped!('ast;
        visit_item_const(syn::ItemConst),
        visit_item_enum(syn::ItemEnum),
        visit_item_foreign_mod(syn::ItemForeignMod),
        visit_item_impl(syn::ItemImpl),
        visit_item_macro(syn::ItemMacro),
        visit_item_static(syn::ItemStatic),
        visit_item_struct(syn::ItemStruct),
        visit_item_trait(syn::ItemTrait),
        visit_item_type(syn::ItemType),
        visit_item_union(syn::ItemUnion),
        visit_impl_item_const(syn::ImplItemConst),
        visit_impl_item_macro(syn::ImplItemMacro),
        visit_impl_item_type(syn::ImplItemType),
        visit_trait_item_const(syn::TraitItemConst),
        visit_trait_item_macro(syn::TraitItemMacro),
        visit_trait_item_type(syn::TraitItemType),
        visit_foreign_item_fn(syn::ForeignItemFn),
        visit_foreign_item_static(syn::ForeignItemStatic),
        visit_local(syn::Local),
        visit_stmt_macro(syn::StmtMacro),
        visit_arm(syn::Arm),
        visit_field(syn::Field),
        visit_variant(syn::Variant),
    );

    fn visit_file(&mut self, node: &'ast syn::File) {
        // An inner `#![cfg(test)]` makes the whole file test code.
        self.scoped(&node.attrs, |v| visit::visit_file(v, node));
    }

    fn visit_item_fn(&mut self, node: &'ast syn::ItemFn) {
        self.scoped(&node.attrs, |v| {
            let close = node.block.brace_token.span.close();
            v.function(&node.sig.ident, node.sig.fn_token.span, close);
            visit::visit_item_fn(v, node);
        });
    }

    fn visit_impl_item_fn(&mut self, node: &'ast syn::ImplItemFn) {
        self.scoped(&node.attrs, |v| {
            let close = node.block.brace_token.span.close();
            v.function(&node.sig.ident, node.sig.fn_token.span, close);
            visit::visit_impl_item_fn(v, node);
        });
    }

    fn visit_trait_item_fn(&mut self, node: &'ast syn::TraitItemFn) {
        self.scoped(&node.attrs, |v| {
            if let Some(body) = &node.default {
                let close = body.brace_token.span.close();
                v.function(&node.sig.ident, node.sig.fn_token.span, close);
            }
            visit::visit_trait_item_fn(v, node);
        });
    }

    fn visit_item_mod(&mut self, node: &'ast syn::ItemMod) {
        self.scoped(&node.attrs, |v| {
            let name = node.ident.unraw().to_string();
            if node.content.is_none() {
                v.facts.decls.push(ModDecl {
                    inline: v.inline.clone(),
                    name,
                    test: v.test,
                    path: path_attribute(&node.attrs),
                });
                return;
            }
            v.inline.push(name);
            v.facts.inline_mods.push(v.inline.clone());
            visit::visit_item_mod(v, node);
            v.inline.pop();
        });
    }

    fn visit_item_use(&mut self, node: &'ast syn::ItemUse) {
        self.scoped(&node.attrs, |v| {
            if node.leading_colon.is_some() {
                return; // `use ::other_crate::..`
            }
            let mut paths = Vec::new();
            flatten_use(&node.tree, &mut Vec::new(), &mut paths);
            for (segments, line) in paths {
                v.reference(segments, line);
            }
        });
    }

    fn visit_path(&mut self, node: &'ast syn::Path) {
        if node.leading_colon.is_none()
            && node.segments.len() > 1
            && let Some(first) = node.segments.first()
        {
            let segments = node
                .segments
                .iter()
                .map(|s| s.ident.unraw().to_string())
                .collect();
            self.reference(segments, line_of(first.ident.span()));
        }
        visit::visit_path(self, node);
    }

    fn visit_vis_restricted(&mut self, _: &'ast syn::VisRestricted) {
        // `pub(in crate::x)` is a visibility, not an import.
    }

    fn visit_token_stream(&mut self, node: &'ast TokenStream) {
        if !self.test {
            self.scan_tokens(node.clone(), Delimiter::None);
        }
    }
}

/// The paths a `use` tree names, groups expanded (a glob ends in `*`, `{self}` in `self`), each
/// with the line of its last segment.
fn flatten_use(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, usize)>) {
    match tree {
        UseTree::Path(path) => {
            prefix.push(path.ident.unraw().to_string());
            flatten_use(&path.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(name) => {
            let segments = joined(prefix, &[name.ident.unraw().to_string()]);
            out.push((segments, line_of(name.ident.span())));
        }
        UseTree::Rename(rename) => {
            let segments = joined(prefix, &[rename.ident.unraw().to_string()]);
            out.push((segments, line_of(rename.ident.span())));
        }
        UseTree::Glob(glob) => {
            let segments = joined(prefix, &["*".to_owned()]);
            out.push((segments, line_of(glob.star_token.spans[0])));
        }
        UseTree::Group(group) if group.items.is_empty() => {
            out.push((prefix.clone(), line_of(group.brace_token.span.open())));
        }
        UseTree::Group(group) => {
            for item in &group.items {
                flatten_use(item, prefix, out);
            }
        }
    }
}

/// The line (from 1) a span starts on.
fn line_of(span: Span) -> usize {
    span.start().line
}

/// The `#[path = "..."]` of a module declaration.
fn path_attribute(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        Meta::NameValue(pair) if pair.path.is_ident("path") => match &pair.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(path),
                ..
            }) => Some(path.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Whether an attribute marks test code (see [`is_test_attr`]).
fn is_test_attribute(attr: &Attribute) -> bool {
    let path: Vec<String> = attr
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let arguments = match &attr.meta {
        Meta::List(list) => list.tokens.clone(),
        Meta::Path(_) | Meta::NameValue(_) => TokenStream::new(),
    };
    is_test_attr(&path, arguments)
}

/// Whether the tokens inside `#[..]` mark test code (see [`is_test_attr`]).
fn is_test_attribute_tokens(tokens: TokenStream) -> bool {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut path = Vec::new();
    let mut i = 0;
    while let Some(TokenTree::Ident(ident)) = tokens.get(i) {
        path.push(ident.to_string());
        i += 1;
        if !is_path_sep(&tokens, i) {
            break;
        }
        i += 2;
    }
    is_test_attr(&path, tokens[i..].iter().cloned().collect())
}

/// Test code is marked by an attribute whose path ends in `test` (`#[test]`, `#[tokio::test]`) or
/// by a `cfg` that names `test` without `not` or `any` (`#[cfg(test)]`,
/// `#[cfg(all(test, feature = "x"))]`, but not `#[cfg(not(test))]`).
fn is_test_attr(path: &[String], arguments: TokenStream) -> bool {
    if path.last().is_some_and(|last| last == "test") {
        return true;
    }
    if !matches!(path, [only] if only == "cfg") {
        return false;
    }
    let mut idents = Vec::new();
    collect_idents(arguments, &mut idents);
    idents.iter().any(|i| i == "test") && !idents.iter().any(|i| i == "not" || i == "any")
}

/// Every identifier in `tokens`, groups included.
fn collect_idents(tokens: TokenStream, out: &mut Vec<String>) {
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => out.push(ident.to_string()),
            TokenTree::Group(group) => collect_idents(group.stream(), out),
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
    }
}

/// If a test attribute (`#[test]`, `#![cfg(test)]`, ..) starts at `tokens[i]`: the index after it,
/// and whether it is an inner attribute.
fn test_attribute_at(tokens: &[TokenTree], i: usize) -> Option<(usize, bool)> {
    let TokenTree::Punct(hash) = &tokens[i] else {
        return None;
    };
    if hash.as_char() != '#' {
        return None;
    }
    let inner = matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '!');
    let at = i + 1 + usize::from(inner);
    match tokens.get(at) {
        Some(TokenTree::Group(group))
            if group.delimiter() == Delimiter::Bracket
                && is_test_attribute_tokens(group.stream()) =>
        {
            Some((at + 1, inner))
        }
        _ => None,
    }
}

/// The index after the item starting at `tokens[from]`: after its `{ .. }` body or its `;`.
fn item_end(tokens: &[TokenTree], from: usize) -> usize {
    tokens[from..]
        .iter()
        .position(|token| match token {
            TokenTree::Group(group) => group.delimiter() == Delimiter::Brace,
            TokenTree::Punct(punct) => punct.as_char() == ';',
            TokenTree::Ident(_) | TokenTree::Literal(_) => false,
        })
        .map_or(tokens.len(), |k| from + k + 1)
}

/// Whether `tokens[i..]` starts with `::`.
fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// A `crate::`, `super::`, `self::` or `$crate::` path starting at `tokens[i]`: its segments
/// (up to the first one that is not an identifier) and the index after it.
fn path_at(tokens: &[TokenTree], i: usize) -> Option<(Vec<String>, usize)> {
    let (first, mut next) = match (&tokens[i], tokens.get(i + 1)) {
        (TokenTree::Punct(dollar), Some(TokenTree::Ident(ident)))
            if dollar.as_char() == '$' && ident == "crate" =>
        {
            ("$crate".to_owned(), i + 2)
        }
        (TokenTree::Ident(ident), _)
            if matches!(ident.to_string().as_str(), "crate" | "self" | "super") =>
        {
            (ident.to_string(), i + 1)
        }
        _ => return None,
    };
    if !is_path_sep(tokens, next) {
        return None;
    }
    let mut segments = vec![first];
    while is_path_sep(tokens, next) {
        let Some(TokenTree::Ident(ident)) = tokens.get(next + 2) else {
            break;
        };
        segments.push(ident.unraw().to_string());
        next += 3;
    }
    Some((segments, next))
}

/// Where a file sits in a module tree.
#[derive(Debug)]
struct FileModule {
    /// The module path of the file's top (`["raft", "log"]`; the root is empty).
    module: Vec<String>,
    /// Declared under `#[cfg(test)]` (or inside such a module).
    test: bool,
}

/// One crate target's module tree.
#[derive(Debug, Default)]
struct ModuleTree {
    /// Every module (inline ones included) and the file it is in.
    modules: BTreeMap<Vec<String>, PathBuf>,
    files: BTreeMap<PathBuf, FileModule>,
}

impl ModuleTree {
    /// Adds `file` as `module`, then the modules it declares (`mod x;`, in `child_dir`).
    fn load(
        &mut self,
        sources: &mut Sources,
        file: &Path,
        module: Vec<String>,
        child_dir: &Path,
        test: bool,
    ) -> anyhow::Result<()> {
        if self.files.contains_key(file) {
            return Ok(()); // reached twice through `#[path]`: its first place counts
        }
        let facts = sources.get(file)?;
        let mut children = Vec::new();
        for decl in &facts.decls {
            let Some((path, dir)) = child_file(file, child_dir, decl) else {
                eprintln!(
                    "warning: {}: no file for `mod {}`",
                    file.display(),
                    decl.name
                );
                continue;
            };
            let mut child = joined(&module, &decl.inline);
            child.push(decl.name.clone());
            children.push((path, dir, child, test || decl.test));
        }
        for inline in &facts.inline_mods {
            self.modules
                .insert(joined(&module, inline), file.to_owned());
        }
        self.modules.insert(module.clone(), file.to_owned());
        self.files
            .insert(file.to_owned(), FileModule { module, test });
        for (path, dir, child, child_test) in children {
            self.load(sources, &path, child, &dir, child_test)?;
        }
        Ok(())
    }

    /// The file of the deepest module along `segments` (`crate::..`, `self::..`, `super::..`)
    /// written in `module`; `None` for another crate's path or one above the root.
    fn resolve(&self, module: &[String], segments: &[String]) -> Option<&Path> {
        let (first, rest) = segments.split_first()?;
        let (mut base, mut rest) = match first.as_str() {
            "crate" | "$crate" => (Vec::new(), rest),
            "self" => (module.to_vec(), rest),
            "super" => (module.to_vec(), segments),
            _ => return None,
        };
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        if !self.modules.contains_key(&base) {
            return None;
        }
        for segment in rest {
            if segment == "*" || segment == "self" {
                break;
            }
            base.push(segment.clone());
            if !self.modules.contains_key(&base) {
                base.pop();
                break;
            }
        }
        self.modules.get(&base).map(PathBuf::as_path)
    }
}

/// The file declared by `decl` in `file` and the directory of its own children, if it exists.
fn child_file(file: &Path, child_dir: &Path, decl: &ModDecl) -> Option<(PathBuf, PathBuf)> {
    if let Some(path) = &decl.path {
        if !decl.inline.is_empty() {
            return None; // `#[path]` inside an inline module: not followed
        }
        // Relative to the declaring file's directory; the file is then like a `mod.rs`.
        let target = file.parent()?.join(path);
        let dir = target.parent()?.to_owned();
        return target.is_file().then_some((target, dir));
    }
    let dir = decl
        .inline
        .iter()
        .fold(child_dir.to_owned(), |dir, m| dir.join(m));
    let own_dir = dir.join(&decl.name);
    [
        dir.join(format!("{}.rs", decl.name)),
        own_dir.join("mod.rs"),
    ]
    .into_iter()
    .find(|candidate| candidate.is_file())
    .map(|found| (found, own_dir))
}

/// `a` followed by `b`.
fn joined(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().chain(b).cloned().collect()
}

/// The module tree of each of the crate's targets.
fn module_trees(sources: &mut Sources, crate_dir: &Path) -> anyhow::Result<Vec<ModuleTree>> {
    target_roots(crate_dir)?
        .into_iter()
        .map(|root| -> anyhow::Result<ModuleTree> {
            let mut tree = ModuleTree::default();
            let dir = root.parent().map(Path::to_owned).unwrap_or_default();
            tree.load(sources, &root, Vec::new(), &dir, false)?;
            Ok(tree)
        })
        .collect()
}

/// The crate's target roots: `src/lib.rs`, `src/main.rs`, `src/bin/*.rs`, `src/bin/*/main.rs`
/// and the `path = "...rs"` of the `[lib]` and `[[bin]]` sections of its Cargo.toml.
fn target_roots(crate_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let src = crate_dir.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|name| src.join(name))
        .filter(|path| path.is_file())
        .collect();
    let bin = src.join("bin");
    if bin.is_dir() {
        for entry in sorted_entries(&bin)? {
            if entry.extension().is_some_and(|e| e == "rs") {
                roots.push(entry);
            } else if entry.join("main.rs").is_file() {
                roots.push(entry.join("main.rs"));
            }
        }
    }
    let manifest_path = crate_dir.join("Cargo.toml");
    let manifest = fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let value = line.strip_prefix("path").map(str::trim_start);
        let Some(value) = value.and_then(|v| v.strip_prefix('=')) else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let path = crate_dir.join(value.trim_start_matches("./"));
        let target = section == "[lib]" || section == "[[bin]]";
        if target && value.ends_with(".rs") && path.is_file() && !roots.contains(&path) {
            roots.push(path);
        }
    }
    Ok(roots)
}

/// The references creating one import: (line, path as written), each once.
type Evidence = BTreeSet<(usize, String)>;
/// One crate's imports: importing file -> imported file -> evidence.
type Graph = BTreeMap<PathBuf, BTreeMap<PathBuf, Evidence>>;

/// One crate's module files (test modules excepted) and its imports between them.
fn import_graph(
    sources: &mut Sources,
    trees: &[ModuleTree],
) -> anyhow::Result<(BTreeSet<PathBuf>, Graph)> {
    let mut files = BTreeSet::new();
    let mut graph = Graph::new();
    for tree in trees {
        for (file, place) in tree.files.iter().filter(|(_, place)| !place.test) {
            files.insert(file.clone());
            for reference in &sources.get(file)?.references {
                let module = joined(&place.module, &reference.inline);
                let Some(target) = tree.resolve(&module, &reference.segments) else {
                    continue;
                };
                if target != file.as_path() {
                    let evidence = (reference.line, reference.segments.join("::"));
                    let imports = graph.entry(file.clone()).or_default();
                    imports
                        .entry(target.to_owned())
                        .or_default()
                        .insert(evidence);
                }
            }
        }
    }
    Ok((files, graph))
}

/// The strongly connected components of more than one file, largest first, each sorted.
fn import_circles<'a>(files: &'a BTreeSet<PathBuf>, graph: &'a Graph) -> Vec<Vec<&'a Path>> {
    let reach: BTreeMap<&Path, BTreeSet<&Path>> = files
        .iter()
        .map(|file| (file.as_path(), reachable(file, graph)))
        .collect();
    let mut placed: BTreeSet<&Path> = BTreeSet::new();
    let mut circles = Vec::new();
    for (&file, from_file) in &reach {
        if placed.contains(file) {
            continue;
        }
        let component: Vec<&Path> = from_file
            .iter()
            .copied()
            .filter(|other| reach.get(other).is_some_and(|back| back.contains(file)))
            .collect();
        placed.extend(component.iter().copied());
        if component.len() > 1 {
            circles.push(component);
        }
    }
    circles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    circles
}

/// Every file reachable from `start` through imports, `start` included.
fn reachable<'a>(start: &'a Path, graph: &'a Graph) -> BTreeSet<&'a Path> {
    let mut seen = BTreeSet::from([start]);
    let mut todo = vec![start];
    while let Some(file) = todo.pop() {
        for next in graph.get(file).into_iter().flat_map(BTreeMap::keys) {
            if seen.insert(next.as_path()) {
                todo.push(next.as_path());
            }
        }
    }
    seen
}

/// A shortest cycle through the first file of `component`, that file at both ends.
fn shortest_cycle<'a>(component: &[&'a Path], graph: &'a Graph) -> Vec<&'a Path> {
    let Some(&start) = component.first() else {
        return Vec::new();
    };
    let mut previous: BTreeMap<&Path, &Path> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(file) = queue.pop_front() {
        for next in graph.get(file).into_iter().flat_map(BTreeMap::keys) {
            let next = next.as_path();
            if !component.contains(&next) {
                continue;
            }
            if next == start {
                let mut cycle = vec![start, file];
                let mut at = file;
                while at != start {
                    at = previous[at];
                    cycle.push(at);
                }
                cycle.reverse();
                return cycle;
            }
            if let Entry::Vacant(slot) = previous.entry(next) {
                slot.insert(file);
                queue.push_back(next);
            }
        }
    }
    Vec::new()
}

/// Prints one crate's import circles, or that it has none.
fn print_circles(
    root: &Path,
    crate_dir: &Path,
    circles: &[Vec<&Path>],
    graph: &Graph,
    sources: &Sources,
) {
    let name = relative(root, crate_dir);
    if circles.is_empty() {
        println!("{name}: no import circles");
        return;
    }
    println!("{name}: {}", plural(circles.len(), "import circle"));
    for (n, component) in circles.iter().enumerate() {
        let files: Vec<String> = component.iter().map(|f| relative(root, f)).collect();
        println!(
            "  circle {}: {} files: {}",
            n + 1,
            files.len(),
            files.join(", ")
        );
        let cycle = shortest_cycle(component, graph);
        let names: Vec<String> = cycle.iter().map(|f| relative(root, f)).collect();
        println!("    for example {}", names.join(" -> "));
        for pair in cycle.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let evidence = graph.get(from).and_then(|imports| imports.get(to));
            let Some((line, path)) = evidence.and_then(BTreeSet::first) else {
                continue;
            };
            let more = evidence.map_or(0, |e| e.len() - 1);
            let more = if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            };
            let (from, to) = (relative(root, from), relative(root, to));
            let text = sources.line(pair[0], *line);
            println!("      {from} -> {to}: {from}:{line}  {text}  [{path}]{more}");
        }
    }
}

/// The functions over [`MAX_FN_LINES`] lines in one crate's `src/` and `build.rs`, test code
/// (and the files of modules declared under `#[cfg(test)]`) excepted.
fn long_functions(
    sources: &mut Sources,
    crate_dir: &Path,
    trees: &[ModuleTree],
) -> anyhow::Result<Vec<(PathBuf, Function)>> {
    let mut test_files = BTreeSet::new();
    let mut other_files = BTreeSet::new();
    for (file, place) in trees.iter().flat_map(|tree| &tree.files) {
        if place.test {
            test_files.insert(file);
        } else {
            other_files.insert(file);
        }
    }
    let mut files = Vec::new();
    let src = crate_dir.join("src");
    if src.is_dir() {
        walk(&src, &mut |path: &Path| -> anyhow::Result<()> {
            if path.extension().is_some_and(|e| e == "rs") {
                files.push(path.to_owned());
            }
            Ok(())
        })?;
    }
    let build = crate_dir.join("build.rs");
    if build.is_file() {
        files.push(build);
    }
    let mut long = Vec::new();
    for file in files {
        if test_files.contains(&file) && !other_files.contains(&file) {
            continue;
        }
        let functions = &sources.get(&file)?.functions;
        let over = functions.iter().filter(|f| f.lines > MAX_FN_LINES);
        long.extend(over.map(|f| (file.clone(), f.clone())));
    }
    Ok(long)
}

/// The workspace's crates: every directory whose Cargo.toml has a `[package]`.
fn workspace_crates(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut crates = Vec::new();
    walk(root, &mut |path: &Path| -> anyhow::Result<()> {
        if path.file_name().is_some_and(|name| name == "Cargo.toml") {
            let manifest =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            if manifest.lines().any(|line| line.trim() == "[package]")
                && let Some(dir) = path.parent()
            {
                crates.push(dir.to_owned());
            }
        }
        Ok(())
    })?;
    crates.sort();
    Ok(crates)
}

/// Calls `visit` on every file under `dir`, in order, skipping `target/` and hidden directories.
fn walk(dir: &Path, visit: &mut impl FnMut(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    for path in sorted_entries(dir)? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !path.is_dir() {
            visit(&path)?;
        } else if name != "target" && !name.starts_with('.') {
            walk(&path, visit)?;
        }
    }
    Ok(())
}

/// The paths in directory `dir`, sorted.
fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let read = || -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    };
    let mut entries = read().with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// `path` relative to the workspace root, for the report.
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `1 crate`, `2 crates`.
fn plural(count: usize, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}
