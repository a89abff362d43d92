//! TLS configuration errors, as an operator meets them: `ringway check` and `ringway run`
//! refuse bad certificates and keys with exit 64 and name the field; the quick form too.

#[path = "common/tls.rs"]
mod tlsc;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tlsc::*;

/// Runs ringway with `args`; (exit code, stdout + stderr). Bounded: a process that does not
/// exit within 20 s is killed and the test fails.
fn ringway(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringway");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            return (status.code().unwrap_or(-1), text);
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringway {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(dir: &Dir, tls_body: &str) -> String {
    let path = dir.path("ringway.toml");
    std::fs::write(
        &path,
        format!(
            "admin = \"\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n\
             [listener.tls]\n{tls_body}\n\
             [[upstream]]\nname = \"app\"\nbackends = [{{ name = \"b0\", address = \"127.0.0.1:9\" }}]\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn entry(dir: &std::path::Path) -> String {
    format!(
        "[[listener.tls.certificate]]\ndir = \"{}\"\n",
        dir.display()
    )
}

#[test]
fn check_names_every_bad_certificate() {
    let ca = Ca::new();
    let dir = Dir::new("check");
    let good = ca.leaf(&["good.test"]);
    let other = ca.leaf(&["other.test"]);
    write_pair(&dir.path("good"), &good);
    // a key that is not the certificate's
    write_pair(
        &dir.path("mismatch"),
        &Leaf {
            key_pem: other.key_pem.clone(),
            ..good.clone()
        },
    );
    write_pair(
        &dir.path("expired"),
        &ca.leaf_with(&["old.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }),
    );
    write_pair(
        &dir.path("garbled"),
        &Leaf {
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ..good.clone()
        },
    );
    let body = [
        entry(&dir.path("good")),
        entry(&dir.path("mismatch")),
        entry(&dir.path("expired")),
        entry(&dir.path("garbled")),
        entry(&dir.path("missing")),
    ]
    .concat();
    let path = config(&dir, &body);
    let (code, out) = ringway(&["check", "--config", &path]);
    assert_eq!(code, 64, "{out}");
    for (i, what) in [
        (1, "does not belong to"),
        (2, "expired"),
        (3, "not valid X.509"),
        (4, "cannot read"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("listener[0].tls.certificate[{i}]")))
            .unwrap_or_else(|| panic!("certificate[{i}] not named:\n{out}"));
        assert!(
            line.contains(what),
            "certificate[{i}]: want {what:?}: {line}"
        );
    }
    assert!(
        !out.contains("certificate[0]"),
        "the good one is fine:\n{out}"
    );
    // run refuses the same file the same way, before binding anything.
    let (code, out2) = ringway(&["run", "--config", &path]);
    assert_eq!(code, 64, "{out2}");
    assert!(out2.contains("listener[0].tls.certificate[1]"), "{out2}");

    // A good file passes and describes its TLS.
    let path = config(&dir, &entry(&dir.path("good")));
    let (code, out) = ringway(&["check", "--config", &path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tls: certificates") && out.contains("alpn [http/1.1]"),
        "{out}"
    );
    // Terminating TLS implies tls_terminated (X-Forwarded-Proto: https, Secure cookies) ...
    assert!(out.contains("tls_terminated=true"), "{out}");
    // ... and the flag still overrides it.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "mode = \"http\"\n",
        "mode = \"http\"\ntls_terminated = false\n",
    );
    std::fs::write(&path, text).unwrap();
    let (code, out) = ringway(&["check", "--config", &path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tls_terminated=false"), "{out}");
}

#[test]
fn tls_fields_are_validated_by_name() {
    let dir = Dir::new("fields");
    for (body, field, what) in [
        ("", "listener[0].tls.certificate", "at least one"),
        (
            "min_version = \"1.1\"\n[[listener.tls.certificate]]\ndir = \"/x\"\n",
            "listener[0].tls.min_version",
            "not one of",
        ),
        (
            "alpn = [\"h2\"]\n[[listener.tls.certificate]]\ndir = \"/x\"\n",
            "listener[0].tls.alpn",
            "HTTP/1.1 only",
        ),
        (
            "[[listener.tls.certificate]]\ndir = \"/x\"\ncert = \"/x/tls.crt\"\n",
            "listener[0].tls.certificate[0]",
            "either dir",
        ),
        (
            "[[listener.tls.certificate]]\ncert = \"/x/tls.crt\"\n",
            "listener[0].tls.certificate[0]",
            "either dir",
        ),
        (
            "refuse_unknown_sni = \"yes\"\n[[listener.tls.certificate]]\ndir = \"/x\"\n",
            "<file>",
            "",
        ),
        (
            "sni = true\n[[listener.tls.certificate]]\ndir = \"/x\"\n",
            "<file>",
            "unknown field",
        ),
    ] {
        let path = config(&dir, body);
        let (code, out) = ringway(&["check", "--config", &path]);
        assert_eq!(code, 64, "{body}: {out}");
        assert!(
            out.contains(field) && out.contains(what),
            "{body}: want {field} {what:?}:\n{out}"
        );
    }
    let path = dir.path("timeouts.toml");
    std::fs::write(
        &path,
        "admin = \"\"\n[timeouts]\ntls_handshake = \"0s\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"a\"\n[[upstream]]\nname = \"a\"\nbackends = [{ name = \"b\", address = \"127.0.0.1:9\" }]\n",
    )
    .unwrap();
    let (code, out) = ringway(&["check", "--config", &path.display().to_string()]);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("timeouts.tls_handshake"), "{out}");
}

#[test]
fn quick_form_pairs_and_checks_files() {
    let base = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
        "--admin",
        "",
    ];
    let mut args = base.to_vec();
    args.extend(["--tls-cert", "/nonexistent/tls.crt"]);
    let (code, out) = ringway(&args);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("--tls-key") && out.contains("pairs"), "{out}");
    args.extend(["--tls-key", "/nonexistent/tls.key"]);
    let (code, out) = ringway(&args);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("listener[0].tls.certificate[0]") && out.contains("cannot read"),
        "{out}"
    );
}
