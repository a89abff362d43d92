//! Command line: `run` (config file or the quick form), `check`, `demo`. Config is parsed and
//! validated before anything is bound; a bad config exits with status 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{raw, Config, ConfigErrors};

pub const EXIT_CONFIG: i32 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "ringway",
    version,
    about = "A gateway for long-lived connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway, from a config file or the quick form (one listener, one upstream).
    Run(Box<RunArgs>),
    /// Validate a config file and print the effective configuration.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start three echo backends and the gateway on loopback, show sticky routing and a
    /// short load; finishes by itself and leaves nothing running.
    #[cfg(feature = "demo")]
    Demo,
}

#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// Config file (TOML). The quick-form flags (marked "Quick form") are then refused (exit
    /// 64); --workers, --io, --admin and the log flags override the file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Quick form: address to listen on.
    #[arg(long)]
    pub listen: Option<String>,
    /// Quick form: backend address (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    /// Quick form: backend DNS name NAME:PORT, re-resolved on its TTL (repeatable).
    #[arg(long = "dns-backend")]
    pub dns_backend: Vec<String>,
    /// Quick form: DNS server ADDR:PORT for --dns-backend (default: /etc/resolv.conf).
    #[arg(long)]
    pub resolver: Option<String>,
    /// Quick form: http (default) or tcp.
    #[arg(long)]
    pub mode: Option<String>,
    /// Quick form: balancing policy (round-robin, least-conn, hash:ip, cookie, ...).
    #[arg(long)]
    pub balance: Option<String>,
    /// Quick form: secret for balance = cookie.
    #[arg(long)]
    pub cookie_secret: Option<String>,
    /// Worker threads (0 = one per usable CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// io backend: auto, uring or epoll.
    #[arg(long)]
    pub io: Option<String>,
    /// Admin listener address ("" = off).
    #[arg(long)]
    pub admin: Option<String>,
    /// Log format: text or json.
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// One log line per request and per tunnel close (target `ringway::access`).
    #[arg(long = "access-log")]
    pub access_log: bool,
    /// Log level or filter (trace, debug, info, warn, error, or e.g. "info,ringway::access=off");
    /// overrides `log.level`. RUST_LOG, when set, overrides both.
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Quick form: accept the PROXY protocol on the listener.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Quick form, tcp mode: send a PROXY header (v1 or v2) to backends.
    #[arg(long)]
    pub send_proxy: Option<String>,
    /// Quick form: tunnel idle timeout (e.g. "300s"; default off).
    #[arg(long)]
    pub tunnel_idle: Option<String>,
    /// Quick form: drain time on SIGTERM (e.g. "30s").
    #[arg(long)]
    pub drain: Option<String>,
    /// Quick form: terminate TLS with this PEM certificate chain (repeatable; pairs with
    /// --tls-key in order; the first pair is the default certificate).
    #[arg(long = "tls-cert", conflicts_with = "config")]
    pub tls_cert: Vec<String>,
    /// Quick form: the PEM private key of the --tls-cert at the same position.
    #[arg(long = "tls-key", conflicts_with = "config")]
    pub tls_key: Vec<String>,
    /// Quick form: connect to the backends over TLS, verifying their certificates against the
    /// CA certificates in this PEM file. The name verified is each --dns-backend's DNS name, or
    /// a --backend's IP address (its certificate must then carry that IP).
    #[arg(long = "tls-ca", conflicts_with = "config")]
    pub tls_ca: Option<String>,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config).and_then(check_files) {
            Ok(c) => {
                print!("{}", crate::config::describe(&c));
                for w in &c.warnings {
                    println!("warning: {w}");
                }
                println!("ok: {} is valid", config.display());
                0
            }
            Err(e) => {
                eprintln!("{}: {} error(s)\n{e}", config.display(), e.0.len());
                EXIT_CONFIG
            }
        },
        #[cfg(feature = "demo")]
        Command::Demo => crate::demo::run(),
        Command::Run(args) => {
            let (config, path) = match load_run_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringway: invalid configuration:\n{e}");
                    return EXIT_CONFIG;
                }
            };
            let args: Arc<RunArgs> = Arc::from(args);
            let overrides: crate::control::Overrides = Arc::new(move |c| apply_overrides(c, &args));
            crate::control::run(config, path, overrides)
        }
    }
}

/// The config for `run`: the file, or one built from the quick-form flags (validated by the
/// same code, so the quick form can't accept what a file would refuse).
pub fn load_run_config(args: &RunArgs) -> Result<(Config, Option<PathBuf>), ConfigErrors> {
    let mut config = match &args.config {
        Some(path) => {
            let quick = quick_flags_given(args);
            if !quick.is_empty() {
                return Err(one_error(
                    "--config",
                    format!(
                        "quick-form flag(s) {} cannot be combined with --config (they would be ignored): set them in {}, or drop --config",
                        quick.join(", "),
                        path.display()
                    ),
                ));
            }
            return apply_overrides(check_files(Config::load(path)?)?, args)
                .map(|c| (c, Some(path.clone())));
        }
        None => check_files(quick_config(args)?)?,
    };
    config = apply_overrides(config, args)?;
    Ok((config, None))
}

/// What the config names on disk loads: TLS certificates and keys (missing, garbled,
/// mismatched or expired → errors naming `listener[i].tls.certificate[j]`).
pub fn check_files(config: Config) -> Result<Config, ConfigErrors> {
    let errors = crate::tls::check(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The quick-form flags present on the command line, spelled as typed. With `--config` they
/// would be ignored, which is worse than refusing them.
fn quick_flags_given(args: &RunArgs) -> Vec<&'static str> {
    let given = [
        ("--listen", args.listen.is_some()),
        ("--backend", !args.backend.is_empty()),
        ("--dns-backend", !args.dns_backend.is_empty()),
        ("--resolver", args.resolver.is_some()),
        ("--mode", args.mode.is_some()),
        ("--balance", args.balance.is_some()),
        ("--cookie-secret", args.cookie_secret.is_some()),
        ("--proxy-protocol", args.proxy_protocol),
        ("--send-proxy", args.send_proxy.is_some()),
        ("--tunnel-idle", args.tunnel_idle.is_some()),
        ("--drain", args.drain.is_some()),
        ("--tls-cert", !args.tls_cert.is_empty()),
        ("--tls-key", !args.tls_key.is_empty()),
        ("--tls-ca", args.tls_ca.is_some()),
    ];
    given.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect()
}

/// The flags that override a config (file or quick form); applied again to the file on every
/// reload, so a SIGHUP keeps `--access-log`, `--log-level` and the rest.
pub fn apply_overrides(mut c: Config, args: &RunArgs) -> Result<Config, ConfigErrors> {
    if let Some(w) = args.workers {
        c.workers = w;
    }
    if let Some(io) = &args.io {
        c.io = match io.as_str() {
            "auto" => crate::config::IoMode::Auto,
            "uring" => crate::config::IoMode::Uring,
            "epoll" => crate::config::IoMode::Epoll,
            other => {
                return Err(one_error(
                    "--io",
                    format!("`{other}` is not one of auto | uring | epoll"),
                ))
            }
        };
    }
    if let Some(a) = &args.admin {
        c.admin = if a.is_empty() {
            None
        } else {
            Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| one_error("--admin", format!("`{a}` is not IP:PORT")))?,
            )
        };
    }
    if args.access_log {
        c.log.access = true;
    }
    if let Some(level) = &args.log_level {
        crate::config::check_log_level(level).map_err(|m| one_error("--log-level", m))?;
        c.log.level = level.clone();
    }
    if let Some(f) = &args.log_format {
        c.log.format = match f.as_str() {
            "text" => crate::config::LogFormat::Text,
            "json" => crate::config::LogFormat::Json,
            other => {
                return Err(one_error(
                    "--log-format",
                    format!("`{other}` is not one of text | json"),
                ))
            }
        };
    }
    Ok(c)
}

fn one_error(field: &str, message: String) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError {
        field: field.into(),
        line: None,
        message,
    }])
}

fn quick_config(args: &RunArgs) -> Result<Config, ConfigErrors> {
    let Some(listen) = &args.listen else {
        return Err(one_error(
            "--listen",
            "give --config FILE, or --listen ADDR with --backend ADDR".into(),
        ));
    };
    let tls = quick_listener_tls(args)?;
    let mut r = raw::RawConfig::default();
    r.listener.push(raw::RawListener {
        name: Some("main".into()),
        bind: Some(listen.clone()),
        mode: Some(args.mode.clone().unwrap_or_else(|| "http".into())),
        upstream: Some("main".into()),
        proxy_protocol: Some(args.proxy_protocol),
        tls,
        ..Default::default()
    });
    let mut u = raw::RawUpstream {
        name: Some("main".into()),
        balance: args.balance.clone(),
        send_proxy: args.send_proxy.clone(),
        tls: args.tls_ca.as_ref().map(|ca| raw::RawUpstreamTls {
            ca_file: Some(ca.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Without --cookie-secret the quick form signs with a random secret of this process: a
    // fixed default would be public, and anyone could mint a cookie for any backend.
    let random_secret = args.balance.as_deref() == Some("cookie") && args.cookie_secret.is_none();
    if args.balance.as_deref() == Some("cookie") {
        u.cookie = Some(raw::RawCookie {
            secret: Some(match &args.cookie_secret {
                Some(s) => s.clone(),
                None => random_secret_hex().map_err(|e| one_error("--cookie-secret", e))?,
            }),
            ..Default::default()
        });
    }
    quick_backends(args, &mut u)?;
    r.upstream.push(u);
    r.timeouts.tunnel_idle = args.tunnel_idle.clone();
    r.timeouts.drain = args.drain.clone();
    let mut config = crate::config::validate_raw(r)?;
    if random_secret {
        config.warnings.push(
            "--balance cookie without --cookie-secret: route cookies are signed with a random \
             secret of this process, so other replicas (and this one after a restart) will not \
             honour them; pass --cookie-secret with the same value on every replica"
                .into(),
        );
    }
    Ok(config)
}

/// `--tls-cert`/`--tls-key` pairs as the listener's `[listener.tls]`.
fn quick_listener_tls(args: &RunArgs) -> Result<Option<raw::RawTls>, ConfigErrors> {
    if args.tls_cert.len() != args.tls_key.len() {
        return Err(one_error(
            "--tls-key",
            format!(
                "{} --tls-cert but {} --tls-key: give them in pairs",
                args.tls_cert.len(),
                args.tls_key.len()
            ),
        ));
    }
    Ok((!args.tls_cert.is_empty()).then(|| raw::RawTls {
        certificate: args
            .tls_cert
            .iter()
            .zip(&args.tls_key)
            .map(|(c, k)| raw::RawCertificate {
                cert: Some(c.clone()),
                key: Some(k.clone()),
                dir: None,
            })
            .collect(),
        ..Default::default()
    }))
}

/// `--backend` addresses or `--dns-backend` names (one or the other) as the upstream's set.
fn quick_backends(args: &RunArgs, u: &mut raw::RawUpstream) -> Result<(), ConfigErrors> {
    let backends: Vec<&String> = args.backend.iter().filter(|b| !b.is_empty()).collect();
    if !args.dns_backend.is_empty() {
        if !backends.is_empty() {
            return Err(one_error(
                "--backend",
                "give --backend or --dns-backend, not both".into(),
            ));
        }
        u.dns = Some(args.dns_backend.clone());
        u.discovery = Some(raw::RawDns {
            resolver: args.resolver.clone(),
            ..Default::default()
        });
    } else {
        if backends.is_empty() {
            return Err(one_error(
                "--backend",
                "at least one --backend ADDR is needed".into(),
            ));
        }
        u.backends = Some(
            backends
                .iter()
                .enumerate()
                .map(|(i, a)| raw::RawBackend {
                    name: Some(format!("b{i}")),
                    address: Some((*a).clone()),
                    weight: None,
                })
                .collect(),
        );
    }
    Ok(())
}

/// 32 random bytes from the kernel, hex-encoded.
fn random_secret_hex() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a random cookie secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
