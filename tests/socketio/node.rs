//! The node side of `tests/socketio.rs`: the npm packages installed once per target dir, and
//! node processes (`server.js`, `client.js`) whose JSON-per-line stdout the test reads.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

/// Where the scripts and the committed `package.json` / `package-lock.json` live.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/socketio")
}

/// `target/socketio-node`: next to the profile dirs, shared by debug and release runs, so the
/// packages are installed once (`.ci/run` warms it with the same three steps as [`install`]).
fn cache_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_ringway"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("CARGO_BIN_EXE_ringway is target/PROFILE/ringway");
    target.join("socketio-node")
}

/// The `node_modules` dir with socket.io and socket.io-client, installed by `npm ci` from the
/// committed lock file on first use (and again whenever the lock file changes). Panics with a
/// clear message when node or npm is missing or the install fails: this test never passes
/// without having run.
pub fn node_modules() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(install)
}

fn install() -> PathBuf {
    require("node");
    let src = source_dir();
    let cache = cache_dir();
    let modules = cache.join("node_modules");
    let lock =
        std::fs::read(src.join("package-lock.json")).expect("tests/socketio/package-lock.json");
    // The stamp is the lock file that was installed, written only after `npm ci` succeeded.
    let stamp = cache.join("installed-package-lock.json");
    if std::fs::read(&stamp).ok().as_ref() == Some(&lock) && modules.join("socket.io").is_dir() {
        return modules;
    }
    require("npm");
    std::fs::create_dir_all(&cache).expect("create target/socketio-node");
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), cache.join(f)).expect("copy the npm package files");
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&cache)
        .status()
        .expect("run npm ci");
    assert!(
        status.success(),
        "`npm ci` in {} failed ({status}): the socket.io test needs the npm registry (or a \
         warm npm cache) to install socket.io and socket.io-client from \
         tests/socketio/package-lock.json",
        cache.display()
    );
    std::fs::write(&stamp, &lock).expect("write the install stamp");
    modules
}

/// Panics, saying what to install, when `tool --version` cannot run.
fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "tests/socketio.rs needs `{tool}` on PATH (Node.js >= 18 with npm; on Debian: \
         apt-get install nodejs npm). It runs a real socket.io 4 server and client and does \
         not skip: install Node.js or deselect this test explicitly (--skip socketio)."
    );
}

/// A running `node SCRIPT ARGS…`: its stdout lines parsed as JSON objects, its stderr kept for
/// the failure message. Killed when dropped; it also exits by itself when its stdin closes,
/// so a test killed mid-run leaves no node process behind.
pub struct Node {
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    /// Set when its stdout closed (it exited).
    exited: Arc<AtomicBool>,
    what: String,
}

impl Node {
    pub fn spawn(script: &str, args: &[&str]) -> Node {
        let modules = node_modules();
        let what = format!("node {script} {}", args.join(" "));
        let mut child = Command::new("node")
            .arg(source_dir().join(script))
            .args(args)
            .env("NODE_PATH", modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let exited = Arc::new(AtomicBool::new(false));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        {
            let (events, stderr, exited) = (events.clone(), stderr.clone(), exited.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => events.lock().unwrap().push(v),
                        Err(_) => {
                            let mut e = stderr.lock().unwrap();
                            e.push_str("(stdout, not JSON) ");
                            e.push_str(&line);
                            e.push('\n');
                        }
                    }
                }
                exited.store(true, Ordering::Release);
            });
        }
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut e = stderr.lock().unwrap();
                    if e.len() < 1 << 20 {
                        e.push_str(&line);
                        e.push('\n');
                    }
                }
            });
        }
        Node {
            stdin: Mutex::new(child.stdin.take()),
            child,
            events,
            stderr,
            exited,
            what,
        }
    }

    /// Every event printed so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Events whose `ev` is `ev`.
    pub fn named(&self, ev: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["ev"] == ev)
            .collect()
    }

    /// Polls (every 50 ms, forever: bound it with `within`) until `done(events)` holds. Panics
    /// with the script's stderr if it exits first.
    pub async fn until(&self, done: impl Fn(&[Value]) -> bool) {
        loop {
            let exited = self.exited.load(Ordering::Acquire);
            if done(&self.events.lock().unwrap()) {
                return;
            }
            if exited {
                panic!("`{}` exited first\n{}", self.what, self.diagnostics());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes one line to the script's stdin.
    pub fn say(&self, line: &str) {
        if let Some(i) = self.stdin.lock().unwrap().as_mut() {
            let _ = writeln!(i, "{line}");
            let _ = i.flush();
        }
    }

    /// The script's stderr and its last events, for failure messages.
    pub fn diagnostics(&self) -> String {
        let ev = self.events();
        let tail: Vec<String> = ev
            .iter()
            .skip(ev.len().saturating_sub(40))
            .map(|v| v.to_string())
            .collect();
        format!(
            "--- {} stderr ---\n{}--- last events ---\n{}",
            self.what,
            self.stderr.lock().unwrap(),
            tail.join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.stdin.lock().unwrap().take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
