//! deploy/systemd/ringway.service against the binary it runs: `systemctl reload` checks the
//! file with the real `ringway check` before signalling, a config error (exit 64) is not
//! restarted in a loop, and `Documentation=` names files the unit's install steps install.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("deploy/systemd/ringway.service")).unwrap()
}

/// Values of `Key=` lines, in order (comments skipped).
fn values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn reload_checks_the_file_before_signalling() {
    let u = unit();
    let start = values(&u, "ExecStart");
    assert_eq!(start.len(), 1);
    let config = start[0]
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .expect("ExecStart has --config FILE")
        .to_string();
    let reload = values(&u, "ExecReload");
    assert_eq!(
        reload,
        vec![
            format!("/usr/local/bin/ringway check --config {config}"),
            "/bin/kill -HUP $MAINPID".to_string(),
        ],
        "ExecReload must run `ringway check` on the ExecStart file, then SIGHUP"
    );

    // The check it runs refuses a bad file with a non-zero status (so systemd never sends the
    // SIGHUP) and accepts a good one.
    let dir = std::env::temp_dir().join(format!("ringway-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nname = \"web\"\nbind = \"nope\"\n").unwrap();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/ringway.toml");
    let check = |p: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(["check", "--config"])
            .arg(p)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(check(&bad), Some(64));
    assert_eq!(check(&good), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_config_error_is_not_restarted_in_a_loop() {
    let u = unit();
    assert_eq!(values(&u, "Restart"), vec!["on-failure".to_string()]);
    let prevent = values(&u, "RestartPreventExitStatus");
    assert!(
        prevent.iter().any(|v| v
            .split_whitespace()
            .any(|s| s == ringway::cli::EXIT_CONFIG.to_string())),
        "RestartPreventExitStatus must list {}: {prevent:?}",
        ringway::cli::EXIT_CONFIG
    );
}

#[test]
fn documentation_points_at_files_the_install_steps_install() {
    let u = unit();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs: Vec<String> = values(&u, "Documentation")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(!docs.is_empty());
    for d in &docs {
        if let Some(path) = d.strip_prefix("file:///usr/local/share/doc/ringway/") {
            // Installed from the repository by the unit's own install comment.
            let install = u
                .lines()
                .find(|l| l.contains("/usr/local/share/doc/ringway") && l.contains("install"))
                .expect("an install step for the docs");
            let source = install
                .split_whitespace()
                .find(|w| Path::new(w).file_name().is_some_and(|f| f == path))
                .unwrap_or_else(|| panic!("{d}: no install step copies {path}:\n{install}"));
            assert!(root.join(source).is_file(), "{d}: {source} does not exist");
        } else {
            assert!(d.starts_with("man:") || d.starts_with("https://"), "{d}");
        }
    }
}
