//! Command line: `run` (config file or the quick form), `check`, `demo`. Config is parsed and
//! validated before anything is bound; a bad config exits with status 64 (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Config file (TOML); the quick-form flags below are then not allowed.
    #[arg(long, short, conflicts_with_all = ["listen", "backend", "dns_backend"])]
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
    /// Quick form: http or tcp.
    #[arg(long, default_value = "http")]
    pub mode: String,
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
    /// Accept the PROXY protocol on the quick-form listener.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// tcp mode: send a PROXY header (v1 or v2) to backends.
    #[arg(long)]
    pub send_proxy: Option<String>,
    /// Tunnel idle timeout (e.g. "300s"; default off).
    #[arg(long)]
    pub tunnel_idle: Option<String>,
    /// Drain time on SIGTERM (e.g. "30s").
    #[arg(long)]
    pub drain: Option<String>,
    /// Quick form: terminate TLS with this PEM certificate chain (repeatable; pairs with
    /// --tls-key in order; the first pair is the default certificate).
    #[arg(long = "tls-cert", conflicts_with = "config")]
    pub tls_cert: Vec<String>,
    /// Quick form: the PEM private key of the --tls-cert at the same position.
    #[arg(long = "tls-key", conflicts_with = "config")]
    pub tls_key: Vec<String>,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config).and_then(check_files) {
            Ok(c) => {
                print!("{}", crate::config::describe(&c));
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
            crate::control::run(config, path, *args)
        }
    }
}

/// The config for `run`: the file, or one built from the quick-form flags (validated by the
/// same code, so the quick form can't accept what a file would refuse).
pub fn load_run_config(args: &RunArgs) -> Result<(Config, Option<PathBuf>), ConfigErrors> {
    let mut config = match &args.config {
        Some(path) => {
            return apply_overrides(check_files(Config::load(path)?)?, args)
                .map(|c| (c, Some(path.clone())))
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

fn apply_overrides(mut c: Config, args: &RunArgs) -> Result<Config, ConfigErrors> {
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
    let tls = (!args.tls_cert.is_empty()).then(|| raw::RawTls {
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
    });
    let mut r = raw::RawConfig::default();
    r.listener.push(raw::RawListener {
        name: Some("main".into()),
        bind: Some(listen.clone()),
        mode: Some(args.mode.clone()),
        upstream: Some("main".into()),
        proxy_protocol: Some(args.proxy_protocol),
        tls,
        ..Default::default()
    });
    let mut u = raw::RawUpstream {
        name: Some("main".into()),
        balance: args.balance.clone(),
        send_proxy: args.send_proxy.clone(),
        ..Default::default()
    };
    if args.balance.as_deref() == Some("cookie") {
        u.cookie = Some(raw::RawCookie {
            secret: Some(
                args.cookie_secret
                    .clone()
                    .unwrap_or_else(|| "ringway-quick-form".into()),
            ),
            ..Default::default()
        });
    }
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
    r.upstream.push(u);
    r.timeouts.tunnel_idle = args.tunnel_idle.clone();
    r.timeouts.drain = args.drain.clone();
    crate::config::validate_raw(r)
}
