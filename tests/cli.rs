//! The command line of the real binary: flags that cannot apply are refused with exit 64 and a
//! message naming them, log flags take effect, and logs written to a pipe carry no colour codes.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Hang guard for a process that should exit by itself (never a speed check).
const EXIT_WAIT: Duration = Duration::from_secs(15);

fn ringway(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringway"));
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Waits (bounded) for `child` to exit; a process still running is killed and reported as
/// `None`. Returns the exit code and everything it wrote to stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    (code, reader.join().unwrap())
}

fn config_file(tag: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ringway-cli-{tag}-{}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

const CONFIG: &str = r#"
admin = ""
[[listener]]
name = "web"
bind = "127.0.0.1:0"
upstream = "app"
[[upstream]]
name = "app"
backends = [{ name = "a", address = "127.0.0.1:9" }]
"#;

#[test]
fn config_with_quick_form_flags_exits_64_naming_them() {
    let path = config_file("quick", CONFIG);
    let p = path.to_str().unwrap();
    let child = ringway(&[
        "run",
        "--config",
        p,
        "--balance",
        "bogus",
        "--drain",
        "99s",
        "--mode",
        "tcp",
    ])
    .spawn()
    .unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, Some(64), "stderr:\n{err}");
    for flag in ["--balance", "--drain", "--mode"] {
        assert!(err.contains(flag), "{flag} not named in:\n{err}");
    }

    // The same with the flags clap used to refuse on its own (exit 2): now 64 too.
    let child = ringway(&[
        "run",
        "--config",
        p,
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
    ])
    .spawn()
    .unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, Some(64), "stderr:\n{err}");
    assert!(
        err.contains("--listen") && err.contains("--backend"),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_bad_log_level_exits_64_naming_the_flag() {
    let child = ringway(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--admin",
        "",
        "--log-level",
        "inof",
    ])
    .spawn()
    .unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, Some(64), "stderr:\n{err}");
    assert!(err.contains("--log-level"), "{err}");

    let path = config_file("level", &format!("{CONFIG}\n[log]\nlevel = \"loud\"\n"));
    let child = ringway(&["check", "--config", path.to_str().unwrap()])
        .spawn()
        .unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, Some(64), "stderr:\n{err}");
    assert!(err.contains("log.level"), "{err}");
    let _ = std::fs::remove_file(path);
}

/// Starts the quick form with `extra` and returns the stderr lines up to and including the
/// "listening" line (bounded), then kills the process.
fn startup_log(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--admin",
        "",
        "--io",
        "epoll",
    ];
    args.extend_from_slice(extra);
    let mut child = ringway(&args).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("listening")),
        "never logged `listening`:\n{}",
        lines.join("\n")
    );
    lines
}

#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    let lines = startup_log(&[]);
    let text = lines.join("\n");
    assert!(
        !text.contains('\x1b'),
        "ANSI escape in piped log:\n{text:?}"
    );
}

#[test]
fn log_level_flag_takes_effect() {
    let quiet = startup_log(&["--log-level", "info"]);
    assert!(!quiet.iter().any(|l| l.contains("DEBUG")), "{quiet:?}");
    let chatty = startup_log(&["--log-level", "debug"]);
    assert!(
        chatty.iter().any(|l| l.contains("DEBUG")),
        "no DEBUG line at --log-level debug:\n{}",
        chatty.join("\n")
    );
}
