//! Docs that lie are bugs: every ```toml block of `README.md` and `docs/*.md`, and the example
//! config the deploy files ship, must pass the same validator as `ringway check`.

use std::path::{Path, PathBuf};

/// Every ```toml fenced block of `text`, with the line its body starts on.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut cur {
            None if fence.starts_with("```toml") => cur = Some((i + 2, String::new())),
            Some(_) if fence.starts_with("```") => out.extend(cur.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(cur.is_none(), "unclosed ```toml block");
    out
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_toml_block_in_the_docs_is_a_valid_config() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in docs() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, block) in toml_blocks(&text) {
            checked += 1;
            if let Err(e) = ringway::config::Config::from_toml(&block) {
                failures.push(format!("{}:{line}:\n{e}", file.display()));
            }
        }
    }
    assert!(
        checked > 0,
        "no ```toml block found: the extractor is broken"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("deploy/examples/ringway.toml");
    if let Err(e) = ringway::config::Config::load(&path) {
        panic!("{}:\n{e}", path.display());
    }
}

#[test]
fn the_extractor_finds_blocks_and_their_lines() {
    let md = "intro\n```toml\na = 1\n```\n```sh\nb\n```\n  ```toml\nc = 2\n  ```\n";
    assert_eq!(
        toml_blocks(md),
        vec![(3, "a = 1\n".to_string()), (9, "c = 2\n".to_string())]
    );
}

/// Every `ringway_*` / `process_*` metric name the docs, the README and the Grafana dashboard
/// mention is one the gateway exports (after a family is merged away, nothing still shows it).
#[test]
fn every_metric_named_in_docs_and_dashboard_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut known = std::collections::HashSet::new();
    for def in ringway::admin::names::ALL {
        let s = def.sample();
        for suffix in ["", "_bucket", "_count", "_sum"] {
            known.insert(format!("{s}{suffix}"));
        }
    }
    let mut files = docs();
    files.push(root.join("deploy/kubernetes/grafana/ringway-dashboard.json"));
    let mut unknown = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let bytes = text.as_bytes();
        for prefix in ["ringway_", "process_"] {
            for (i, _) in text.match_indices(prefix) {
                if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                    continue;
                }
                let end = text[i..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .map_or(text.len(), |n| i + n);
                let name = &text[i..end];
                // Not metric names: Rust paths, the crate name in a log target, file names.
                let prose = name.ends_with('_')
                    || text[end..].starts_with("::")
                    || text[end..].starts_with('.');
                if !prose && !known.contains(name) {
                    unknown.push(format!("{}: {name}", file.display()));
                }
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "unknown metric names:\n{}",
        unknown.join("\n")
    );
}
