//! Fault injection owned by the fault tests (`tests/faults.rs`).
//!
//! # Layout
//! - [`Proxy`]: a TCP proxy put between a service and one of its dependencies; the
//!   test cuts it (connections reset, new ones refused), blackholes it (connections
//!   stay open, nothing arrives: the case only timeouts catch), delays it, and
//!   restores it.
//! - [`RedisServer`]: a private `redis-server` process with an append-only file, which
//!   the test kills with SIGKILL and restarts on the same port: the data comes back,
//!   the script cache does not; or restarts it empty, as a Redis without persistence
//!   comes back.
//! - [`RedisCluster`]: a private Redis Cluster of a few masters without persistence:
//!   one master is restarted empty (keeping its cluster configuration, as a node whose
//!   data was in memory only), frozen (SIGSTOP: connections open, no answer) or has its
//!   script cache flushed, while the others go on.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk, in either direction, is held this long before it is forwarded.
    Delay(Duration),
    /// Connections stay open but nothing is forwarded until the mode changes.
    Blackhole,
    /// Open connections are reset; new ones are reset as soon as they are accepted.
    Refuse,
}

/// A TCP proxy on 127.0.0.1 (port chosen by the system) in front of `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(watch::Sender::new(Mode::Pass));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, upstream, Arc::clone(&mode), stop.clone()));
        Ok(Self { addr, mode, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The dependency is unreachable: open connections reset, new ones refused.
    pub fn cut(&self) {
        self.set(Mode::Refuse);
    }

    pub fn restore(&self) {
        self.set(Mode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        reset_on_close(&client);
        if *mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, mode.subscribe(), stop.clone()));
    }
}

/// Closing a socket with linger 0 sends RST instead of FIN: what a crashed peer looks like.
fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stop: CancellationToken,
) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    reset_on_close(&server);
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut refused = mode.clone();
    tokio::select! {
        _ = pipe(cr, sw, mode.clone()) => {}
        _ = pipe(sr, cw, mode) => {}
        _ = refused.wait_for(|m| *m == Mode::Refuse) => {}
        _ = stop.cancelled() => {}
    }
    // Dropping both halves of both sockets resets them.
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                // What arrives while blackholed is lost, as on a dead link.
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                    if *mode.borrow() != Mode::Refuse {
                        break;
                    }
                }
                Mode::Refuse => return,
            }
        }
        if *mode.borrow() == Mode::Blackhole {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A private redis-server with an append-only file (fsync always), on a fixed port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port; `None` when `redis-server` is not installed.
    pub async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("flashsale-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut me = Self { port, dir, child: None };
        me.restart().await.then_some(me)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL: no shutdown, no save beyond what the append-only file already holds.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts it with nothing on disk: a Redis that kept nothing (no persistence),
    /// or lost its files.
    pub async fn restart_empty(&mut self) -> bool {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::fs::create_dir_all(&self.dir).is_err() {
            return false;
        }
        self.restart().await
    }

    /// (Re)starts the server on the same port and directory; true once it answers PING.
    pub async fn restart(&mut self) -> bool {
        self.kill();
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = spawned else { return false };
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers_pong().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether it answers PING with PONG: accepting connections is not enough, a
    /// server still loading its append-only file answers `-LOADING`.
    async fn answers_pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr()).await else { return false };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].starts_with(b"+PONG"),
            _ => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis Cluster: `n` masters on ports at or below 55535 (the cluster bus
/// is port + 10000), no persistence, `cluster-require-full-coverage no` (the other
/// masters serve while one is down) and a short node timeout.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    fn spawn(&mut self) -> bool {
        self.kill();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => {
                self.child = Some(child);
                true
            }
            Err(_) => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A free port p with p + 10000 free too, at most 55535.
fn cluster_port(taken: &[u16]) -> Option<u16> {
    (0..200).find_map(|_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let p = l.local_addr().ok()?.port();
        let fits = p <= 55535
            && !taken.contains(&p)
            && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok();
        fits.then_some(p)
    })
}

impl RedisCluster {
    /// Starts `n` masters and joins them (`redis-cli --cluster create`); `None` when
    /// redis-server or redis-cli is missing or the cluster does not form.
    pub async fn start(n: usize) -> Option<Self> {
        Self::start_with_replicas(n, 0).await
    }

    /// `masters` masters with `replicas` replicas each. Tried up to three times: the
    /// nodes' ports are picked free from the ephemeral range, and a client's outgoing
    /// connection can take one before its node binds it (seen under load).
    pub async fn start_with_replicas(masters: usize, replicas: usize) -> Option<Self> {
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start(masters, replicas).await {
                return Some(cluster);
            }
        }
        None
    }

    async fn try_start(masters: usize, replicas: usize) -> Option<Self> {
        let n = masters * (1 + replicas);
        // Nodes join `me` as they start, so a failed attempt stops the ones it started.
        let mut me = Self { nodes: Vec::new() };
        for _ in 0..n {
            let taken: Vec<u16> = me.nodes.iter().map(|n: &ClusterNode| n.port).collect();
            let port = cluster_port(&taken)?;
            let dir = std::env::temp_dir().join(format!("flashsale-cluster-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).ok()?;
            me.nodes.push(ClusterNode { port, dir, child: None });
            if !me.nodes.last_mut().is_some_and(ClusterNode::spawn) {
                return None;
            }
        }
        for i in 0..n {
            if !me.answers(i).await {
                return None;
            }
        }
        let addrs: Vec<String> = me.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        (created.success() && me.healthy(Duration::from_secs(20)).await && me.replicas_synced().await)
            .then_some(me)
    }

    /// Waits until every running replica's link to its master is up (a write can be
    /// acknowledged by it only then).
    pub async fn replicas_synced(&self) -> bool {
        for _ in 0..300 {
            let synced = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                n.cli(&["info", "replication"])
                    .is_some_and(|o| !o.contains("role:slave") || o.contains("master_link_status:up"))
            });
            if synced {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Waits until master `i`'s replica holds every write the master had when asked
    /// (its replication offset caught up): a failover from then on loses nothing.
    pub async fn replica_caught_up(&self, i: usize, patience: Duration) -> bool {
        let offset = |n: &ClusterNode, field: &str| -> Option<u64> {
            let info = n.cli(&["info", "replication"])?;
            info.lines().find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
        };
        let (Some(master), Some(replica)) =
            (self.nodes.get(i), self.replica_of(i).and_then(|r| self.nodes.get(r)))
        else {
            return false;
        };
        let Some(target) = offset(master, "master_repl_offset:") else { return false };
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            if offset(replica, "slave_repl_offset:").is_some_and(|o| o >= target) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The seed list, as `redis.cluster_nodes` takes it.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Which node (by index) serves `slot`.
    pub fn node_of_slot(&self, slot: u16) -> Option<usize> {
        let slots = self.nodes.iter().find(|n| n.child.is_some())?.cli(&["cluster", "slots"])?;
        // Lines: start, end, ip, port, id, (then the next range): read triples loosely.
        let words: Vec<&str> = slots.lines().map(str::trim).collect();
        for w in words.windows(4) {
            let (Ok(start), Ok(end), Ok(port)) =
                (w[0].parse::<u16>(), w[1].parse::<u16>(), w[3].parse::<u16>())
            else {
                continue;
            };
            if w[2] == "127.0.0.1" && (start..=end).contains(&slot) {
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Which node (by index) replicates node `master`, as the cluster says now.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let id = self.node_id(master)?;
        let nodes = self.nodes.iter().find(|n| n.child.is_some())?.cli(&["cluster", "nodes"])?;
        nodes.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let port: u16 = w.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            (w.get(2)?.contains("slave") && w.get(3) == Some(&id.as_str()))
                .then(|| self.nodes.iter().position(|n| n.port == port))
                .flatten()
        })
    }

    fn node_id(&self, i: usize) -> Option<String> {
        Some(self.nodes.get(i)?.cli(&["cluster", "myid"])?.trim().to_owned())
    }

    /// SIGKILL, for good (a failover promotes its replica, if it has one).
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.kill();
        }
    }

    /// SIGKILL, then the same node again with no data: what a master without
    /// persistence is after a crash (its cluster configuration is on disk and kept).
    /// True once the cluster is healthy again.
    pub async fn restart_empty(&mut self, i: usize) -> bool {
        let Some(node) = self.nodes.get_mut(i) else { return false };
        node.kill();
        node.spawn() && self.answers(i).await && self.healthy(Duration::from_secs(20)).await
    }

    /// SIGSTOP: its connections stay open and nothing is answered (a blackholed node).
    pub fn freeze(&self, i: usize) {
        if let Some(n) = self.nodes.get(i) {
            n.signal("-STOP");
        }
    }

    /// Closes node `i`'s connections to its replicas (`CLIENT KILL TYPE replica`): with
    /// the replica frozen it cannot reconnect, and misses every write after this.
    pub fn cut_replication(&self, i: usize) -> bool {
        self.nodes.get(i).and_then(|n| n.cli(&["client", "kill", "type", "replica"])).is_some()
    }

    /// Waits until node `i` is a master (a failover promoted it).
    pub async fn promoted(&self, i: usize, patience: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            if self
                .nodes
                .get(i)
                .and_then(|n| n.cli(&["info", "replication"]))
                .is_some_and(|o| o.contains("role:master"))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGCONT after [`RedisCluster::freeze`].
    pub fn thaw(&self, i: usize) {
        if let Some(n) = self.nodes.get(i) {
            n.signal("-CONT");
        }
    }

    /// Any `redis-cli` command on node `i`; its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Option<String> {
        self.nodes.get(i).and_then(|n| n.cli(args))
    }

    /// `SCRIPT FLUSH` on one node.
    pub fn script_flush(&self, i: usize) -> bool {
        self.nodes.get(i).and_then(|n| n.cli(&["script", "flush"])).is_some_and(|o| o.contains("OK"))
    }

    async fn answers(&self, i: usize) -> bool {
        let Some(n) = self.nodes.get(i) else { return false };
        for _ in 0..200 {
            if n.cli(&["ping"]).is_some_and(|o| o.contains("PONG")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Every node says `cluster_state:ok` and every node names the same masters for
    /// the same slots (a client that learns the slot map from any of them is not
    /// sent elsewhere by `MOVED`).
    pub async fn healthy(&self, patience: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            let mut running = self.nodes.iter().filter(|n| n.child.is_some()).peekable();
            if running.peek().is_some()
                && running
                    .all(|n| n.cli(&["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok")))
                && self.masters_agree()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Whether every running node's `CLUSTER NODES` names the same masters with the
    /// same slots.
    fn masters_agree(&self) -> bool {
        let views: Vec<Option<Vec<String>>> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                let out = n.cli(&["cluster", "nodes"])?;
                let mut masters: Vec<String> = out
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let flags = f.get(2)?;
                        (flags.contains("master") && !flags.contains("fail") && f.len() > 8)
                            .then(|| format!("{} {}", f[1].split('@').next().unwrap_or(""), f[8..].join(" ")))
                    })
                    .collect();
                masters.sort();
                Some(masters)
            })
            .collect();
        views.first().is_some_and(|first| first.is_some() && views.iter().all(|v| v == first))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.signal("-CONT");
            n.kill();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
    }
}
