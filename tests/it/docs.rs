//! Docs that cannot rot: every relative link in README.md and docs/*.md leads to a file of the
//! repository (and, with `#anchor`, to a heading of that file), every `tests/...` path and
//! `cargo test --test ...` command they name exists, and nothing in the repository cites a file
//! outside it. The README's quick tour is run command by command by
//! `tests/it/examples.rs`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut documents = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    documents.extend(docs);
    documents
}

/// README.md, every docs/*.md and the scripts, which name test files and commands.
fn naming_tests() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = documents();
    files.extend([root.join("scripts/test"), root.join(".ci/run")]);
    files
}

/// The `tests/...` paths `text` names: from a `tests/` that does not continue a longer path, up
/// to the first character a path here does not hold (a trailing `.` ends a sentence).
fn test_paths(text: &str) -> Vec<String> {
    let in_path = |c: char| c.is_alphanumeric() || matches!(c, '/' | '_' | '-' | '.');
    text.match_indices("tests/")
        .filter(|(at, _)| {
            text[..*at]
                .chars()
                .next_back()
                .is_none_or(|c| !in_path(c) && c != '$')
        })
        .map(|(at, _)| {
            let path: String = text[at..].chars().take_while(|c| in_path(*c)).collect();
            path.trim_end_matches('.').to_owned()
        })
        .collect()
}

/// The test targets of the `cargo test --test NAME [FILTER]` commands in `text`, each with the
/// module its filter names (`replicas` in `--test it replicas::`), if any; a placeholder
/// (`--test ...`) names none.
fn test_targets(text: &str) -> Vec<(String, Option<String>)> {
    let word = |rest: &str| -> String {
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    text.match_indices("--test ")
        .map(|(at, found)| {
            let rest = &text[at + found.len()..];
            let target = word(rest);
            let filter = rest[target.len()..].strip_prefix(' ').map(word);
            let module =
                filter.filter(|module| rest[target.len() + 1 + module.len()..].starts_with("::"));
            (target, module)
        })
        .filter(|(target, _)| !target.is_empty())
        .collect()
}

/// What is wrong with the test target `target` (and `module` of it), if anything.
fn missing_target(target: &str, module: Option<&str>) -> Option<String> {
    let tests = repo_root().join("tests");
    let file = tests.join(format!("{target}.rs"));
    let dir = tests.join(target);
    if !file.is_file() && !dir.join("main.rs").is_file() {
        return Some(format!(
            "--test {target}: no tests/{target}.rs nor tests/{target}/main.rs"
        ));
    }
    let module = module?;
    (!dir.join(format!("{module}.rs")).is_file() && !dir.join(module).join("mod.rs").is_file())
        .then(|| format!("--test {target} {module}::: no module {module} in tests/{target}/"))
}

/// The text outside fenced code blocks and inline code, where a `[..](..)` is a link.
fn prose(markdown: &str) -> String {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans: `a](b)` inside backticks is not a link.
        let mut in_code = false;
        for character in line.chars() {
            if character == '`' {
                in_code = !in_code;
            } else if !in_code {
                prose.push(character);
            }
        }
        prose.push('\n');
    }
    prose
}

/// The targets of the `[text](target)` links of `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    let prose = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        targets.push(rest[..end].trim().to_owned());
        rest = &rest[end..];
    }
    targets
}

/// GitHub's anchors for the headings of `markdown`: lowercase, punctuation dropped, spaces as
/// `-`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let anchor: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

/// What is wrong with `target`, linked from `document`, if anything.
fn broken(document: &Path, target: &str) -> Option<String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        document.to_owned()
    } else {
        document.parent().unwrap().join(path)
    };
    let Ok(file) = file.canonicalize() else {
        return Some(format!("{target}: no such file"));
    };
    if !file.starts_with(repo_root().canonicalize().unwrap()) {
        return Some(format!("{target}: outside the repository"));
    }
    let anchor = anchor?;
    let text = std::fs::read_to_string(&file).ok()?;
    (!anchors(&text).contains(anchor)).then(|| format!("{target}: no heading #{anchor}"))
}

#[test]
fn every_relative_link_resolves_in_the_repository() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = std::fs::read_to_string(&document).unwrap();
        for target in link_targets(&text) {
            checked += 1;
            if let Some(problem) = broken(&document, &target) {
                problems.push(format!("{}: {problem}", document.display()));
            }
        }
    }
    assert!(checked > 20, "the link parser found only {checked} links");
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_checker_catches_what_it_should() {
    let readme = repo_root().join("README.md");
    assert_eq!(broken(&readme, "docs/api.md"), None);
    assert_eq!(broken(&readme, "docs/api.md#errors"), None);
    assert!(broken(&readme, "docs/no-such.md").is_some());
    assert!(broken(&readme, "docs/api.md#no-such-heading").is_some());
    assert!(broken(&readme, "../outside.md").is_some());
    assert_eq!(
        link_targets("[a](b.md) `[c](d.md)`\n```\n[e](f.md)\n```\n"),
        ["b.md"]
    );
    assert!(anchors("## Errors and exit status\n").contains("errors-and-exit-status"));
}

#[test]
fn every_test_file_and_test_command_named_exists() {
    let root = repo_root();
    let mut named = 0;
    let mut missing = Vec::new();
    for file in naming_tests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for path in test_paths(&text) {
            named += 1;
            if !root.join(&path).exists() {
                missing.push(format!("{}: {path}: no such file", file.display()));
            }
        }
        for (target, module) in test_targets(&text) {
            named += 1;
            if let Some(problem) = missing_target(&target, module.as_deref()) {
                missing.push(format!("{}: {problem}", file.display()));
            }
        }
    }
    assert!(named > 10, "found only {named} test files and commands");
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_test_name_checker_catches_what_it_should() {
    assert_eq!(
        test_paths("in tests/it/faults.rs. (`tests/browser`'s) $PWD/tests/x a/tests/y tests/"),
        ["tests/it/faults.rs", "tests/browser", "tests/"]
    );
    assert_eq!(
        test_targets(
            "`cargo test --test it replicas:: -- --nocapture`, --test console, --test ..."
        ),
        [
            ("it".to_owned(), Some("replicas".to_owned())),
            ("console".to_owned(), None)
        ]
    );
    assert_eq!(missing_target("it", Some("replicas")), None);
    assert_eq!(missing_target("operability", None), None);
    assert!(missing_target("replicas", None).is_some());
    assert!(missing_target("it", Some("no_such_area")).is_some());
}

#[test]
fn nothing_cites_a_file_outside_the_repository() {
    // Spelled in two parts, so that this file does not cite it either.
    let outside = ["shared", "docs"].join("/");
    let root = repo_root();
    let mut citing = Vec::new();
    let mut stack: Vec<PathBuf> = ["README.md", "docs", "src", "tests", "examples", "scripts"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "node_modules") {
                continue;
            }
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains(&outside)
        {
            citing.push(path.display().to_string());
        }
    }
    assert!(citing.is_empty(), "cite {outside}: {citing:?}");
}
