//! Secrets read by validation: the admin token (`admin_token_file`) and route-cookie secrets
//! (`secret`, `secrets`, `secret_file`). Files are read here, so `ringway check` and every
//! reload see the file as it is now (a rotated Secret is picked up by SIGHUP), and an
//! unreadable one is a config error naming the field.

use super::raw::RawCookie;
use super::validate::Errors;
use super::AdminToken;

/// The token in `admin_token_file`: its first non-blank line, trimmed (a mounted Secret often
/// ends with a newline). At least 16 bytes: a short token is guessable over the network.
pub(super) fn admin_token(e: &mut Errors, path: &str) -> Option<AdminToken> {
    let field = "admin_token_file";
    match std::fs::read_to_string(path) {
        Err(err) => {
            e.push(field, format!("cannot read `{path}`: {err}"));
            None
        }
        Ok(text) => match text.lines().map(str::trim).find(|l| !l.is_empty()) {
            None => {
                e.push(
                    field,
                    format!("`{path}` is empty; put a token in it (e.g. `openssl rand -hex 32`)"),
                );
                None
            }
            Some(t) if t.len() < MIN_SECRET_LEN || t.bytes().any(|b| !b.is_ascii_graphic()) => {
                e.push(
                    field,
                    format!(
                        "the token in `{path}` must be at least {MIN_SECRET_LEN} visible ASCII \
                         characters (e.g. `openssl rand -hex 32`)"
                    ),
                );
                None
            }
            Some(t) => Some(AdminToken::new(t)),
        },
    }
}

/// The placeholder secret of the shipped examples: a file that still has it is valid, but
/// anyone who read the example can mint cookies for any backend.
const EXAMPLE_SECRET: &str = "change-me";

/// Shortest secret that is not warned about (HMAC-SHA1 keys below 16 bytes are guessable).
const MIN_SECRET_LEN: usize = 16;

/// A cookie policy's secrets from exactly one of `secret`, `secrets` (the first signs, all
/// verify: rotation) or `secret_file` (a mounted Kubernetes Secret: one secret per line, the
/// first signs; blank lines and `#` comments skipped; re-read on reload).
pub(super) fn cookie_secrets(
    e: &mut Errors,
    warnings: &mut Vec<String>,
    field: &str,
    rc: &RawCookie,
    needed: bool,
) -> (Vec<String>, Option<std::path::PathBuf>) {
    let given = [
        rc.secret.is_some(),
        rc.secrets.is_some(),
        rc.secret_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        e.push(
            format!("{field}.cookie"),
            "give one of secret, secrets, secret_file",
        );
        return (Vec::new(), None);
    }
    let mut file = None;
    let (list, where_) = if let Some(s) = &rc.secret {
        (vec![s.clone()], format!("{field}.cookie.secret"))
    } else if let Some(list) = &rc.secrets {
        (list.clone(), format!("{field}.cookie.secrets"))
    } else if let Some(path) = &rc.secret_file {
        let f = format!("{field}.cookie.secret_file");
        match std::fs::read_to_string(path) {
            Ok(text) => {
                file = Some(std::path::PathBuf::from(path));
                let lines = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                (lines, f)
            }
            Err(err) => {
                e.push(f, format!("cannot read `{path}`: {err}"));
                return (Vec::new(), None);
            }
        }
    } else {
        if needed {
            e.push(
                format!("{field}.cookie.secret"),
                "set a secret (the same on every replica) so cookie values stay opaque: \
                 secret, secrets = [new, old...] or secret_file (a mounted Secret)",
            );
        }
        return (Vec::new(), None);
    };
    if list.is_empty() || list.iter().any(String::is_empty) {
        e.push(where_, "empty: give at least one non-empty secret");
        return (Vec::new(), None);
    }
    if needed {
        if list.iter().any(|s| s.contains(EXAMPLE_SECRET)) {
            warnings.push(format!(
                "{where_}: still the example's placeholder (`{EXAMPLE_SECRET}...`): anyone who \
                 read the example can mint a cookie for any backend; use a long random secret \
                 (e.g. `openssl rand -hex 32`)"
            ));
        } else if list.iter().any(|s| s.len() < MIN_SECRET_LEN) {
            warnings.push(format!(
                "{where_}: a secret shorter than {MIN_SECRET_LEN} bytes can be guessed; use a \
                 long random one (e.g. `openssl rand -hex 32`)"
            ));
        }
    }
    (list, file)
}
