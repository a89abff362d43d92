//! `hash:ip` stickiness against the real binary (issue 11, item 1): 200 device connections from
//! 50 source IPs over 3 backends, all of an IP's connections on one backend; when a backend dies
//! only its own clients move, and removing it from the config moves nobody else. Run with
//! bounded load off (the default) and on (`load_factor = 1.25`: a key stays with its live
//! connections).

#[macro_use]
#[path = "common/both_io.rs"]
mod both_io;
#[path = "common/ops_harness.rs"]
mod harness;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use harness::{temp_dir, Gateway, STEP};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A tcp backend that greets every connection with `NAME\n` and holds it until EOF. `kill`
/// closes the listener and every connection it holds (a pod that died).
struct Tagged {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Tagged {
    async fn spawn(name: &'static str) -> Tagged {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let held = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let mut sink = [0u8; 256];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Tagged { addr, tasks }
    }

    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A device connection: from `ip`, through the gateway, greeted by its backend.
struct Device {
    ip: IpAddr,
    backend: String,
    reader: BufReader<TcpStream>,
}

async fn connect_from(gw: SocketAddr, ip: IpAddr) -> Device {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip, 0)).unwrap();
    let s = tokio::time::timeout(STEP, sock.connect(gw))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(STEP, reader.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    assert!(line.ends_with('\n'), "no greeting from a backend: {line:?}");
    Device {
        ip,
        backend: line.trim().to_string(),
        reader,
    }
}

/// Waits (bounded) until the backend side closed this device's connection.
async fn closed(d: &mut Device) {
    let mut rest = String::new();
    let _ = tokio::time::timeout(STEP, d.reader.read_line(&mut rest))
        .await
        .expect("the dead backend's connection closes");
}

fn ips() -> Vec<IpAddr> {
    (1..=50u8).map(|i| IpAddr::from([127, 1, 0, i])).collect()
}

fn config(backends: &[(&str, SocketAddr)], load_factor: &str) -> String {
    let list = backends
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "workers = 2\nadmin = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"devices\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"d\"\n\
         [[upstream]]\nname = \"d\"\nbalance = \"hash:ip\"\n{load_factor}\nbackends = [{list}]\n"
    )
}

/// Each IP's backends.
fn homes(devices: &[Device]) -> HashMap<IpAddr, HashSet<String>> {
    let mut m: HashMap<IpAddr, HashSet<String>> = HashMap::new();
    for d in devices {
        m.entry(d.ip).or_default().insert(d.backend.clone());
    }
    m
}

async fn scenario(io: &str, tag: &str, load_factor: &str) {
    let bounded = !load_factor.is_empty();
    let b = [
        Tagged::spawn("b0").await,
        Tagged::spawn("b1").await,
        Tagged::spawn("b2").await,
    ];
    let all = [("b0", b[0].addr), ("b1", b[1].addr), ("b2", b[2].addr)];
    let dir = temp_dir(&format!("{tag}-{io}"));
    let path = dir.join("ringway.toml");
    std::fs::write(&path, config(&all, load_factor)).unwrap();
    let gw = Gateway::start(&["--config", path.to_str().unwrap(), "--io", io]);

    // 200 connections: 4 rounds of one connection per IP.
    let mut devices = Vec::new();
    for _ in 0..4 {
        for ip in ips() {
            devices.push(connect_from(gw.listen, ip).await);
        }
    }
    let home: HashMap<IpAddr, String> = homes(&devices)
        .into_iter()
        .map(|(ip, set)| {
            assert_eq!(set.len(), 1, "{tag}: {ip}'s connections split over {set:?}");
            (ip, set.into_iter().next().unwrap())
        })
        .collect();
    let used: HashSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "{tag}: 50 IPs should use all 3 backends");

    // b1 dies: its connections end, the others stay open.
    b[1].kill();
    let (mut dead, alive): (Vec<Device>, Vec<Device>) =
        devices.into_iter().partition(|d| d.backend == "b1");
    for d in dead.iter_mut() {
        closed(d).await;
    }
    drop(dead);
    // Every IP connects again (b1's clients four times): only b1's clients move, and each of
    // them lands on one backend.
    let mut again = Vec::new();
    for ip in ips() {
        let n = if home[&ip] == "b1" { 4 } else { 1 };
        for _ in 0..n {
            again.push(connect_from(gw.listen, ip).await);
        }
    }
    let mut moved_survivors = 0;
    let mut after_death: HashMap<IpAddr, String> = HashMap::new();
    for (ip, set) in homes(&again) {
        assert_eq!(
            set.len(),
            1,
            "{tag}: after the death {ip} split over {set:?}"
        );
        let now = set.into_iter().next().unwrap();
        if home[&ip] == "b1" {
            assert_ne!(now, "b1", "{tag}: a dead backend took a connection");
        } else if now != home[&ip] {
            moved_survivors += 1;
        }
        after_death.insert(ip, now);
    }
    assert_eq!(
        moved_survivors, 0,
        "{tag}: clients of surviving backends moved after b1 died"
    );

    // b1 leaves the config: the survivors' clients do not move. b1's former clients stay
    // where they went when their connections are live and bounded load tracks keys; unbounded,
    // the rebuilt table may place some of them anew (their first move followed the probe
    // order, the rebuild fills b1's slots its own way): they are not asserted on then.
    std::fs::write(&path, config(&[all[0], all[2]], load_factor)).unwrap();
    gw.signal(libc::SIGHUP);
    gw.metrics_until("the reload counted", |s| {
        s.sum("ringway_config_reloads_total", &[("result", "ok")]) == 1.0
    })
    .await;
    let mut moved = Vec::new();
    for ip in ips() {
        let d = connect_from(gw.listen, ip).await;
        let strict = home[&ip] != "b1" || bounded;
        if strict && d.backend != after_death[&ip] {
            moved.push((ip, after_death[&ip].clone(), d.backend.clone()));
        }
        again.push(d);
    }
    assert!(
        moved.is_empty(),
        "{tag}: removing the dead backend moved clients: {moved:?}"
    );
    drop(alive);
}

async fn hash_ip_is_sticky_by_default(io: &'static str) {
    scenario(io, "sticky-unbounded", "").await;
}

async fn hash_ip_with_bounded_load_keeps_siblings_together(io: &'static str) {
    scenario(io, "sticky-bounded", "load_factor = 1.25").await;
}

both_io!(
    hash_ip_is_sticky_by_default,
    hash_ip_with_bounded_load_keeps_siblings_together,
);
