//! ringway: a gateway for long-lived connections (WebSocket, socket.io, raw TCP) in front of
//! Kubernetes pods. See docs/architecture.md for how a connection flows through these modules.
//!
//! Dependencies flow one way: `cli → {control, demo} → {admin, discovery, proxy} → balance →
//! {proto, sys, config, error}`; `logging` is used by `control` and `demo`. The proxy reads
//! table snapshots; it never calls discovery.
#![deny(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod error;
pub mod io;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod proxy;
pub mod runtime;
pub mod state;
pub mod sys;
pub mod tls;
