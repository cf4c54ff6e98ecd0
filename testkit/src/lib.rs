//! Dev-only: what the test suites share. Every test works in a namespace and a MySQL
//! database of its own ([`isolate`]), so suites run in parallel against the one set
//! of real services, and removes them afterwards ([`cleanup`]).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use common::config::{RedisSettings, Settings};
use hmac::{Hmac, Mac};
use sha2::Sha256;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The default settings moved to a namespace and a MySQL database of their own;
/// `tag` names the suite in both (`<tag><pid>-<n>`, `fs_<tag>_<pid>_<n>`).
pub fn isolate(tag: &str) -> Settings {
    watch_this_test();
    // `FLASHSALE_TEST_LOG=1` prints the services' logs (`RUST_LOG` picks the levels).
    if std::env::var_os("FLASHSALE_TEST_LOG").is_some() {
        // Logs only: tests export no traces (the trace test runs the binaries).
        std::mem::forget(common::telemetry::init("tests"));
    }
    let mut s = Settings::load(None).unwrap();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    s.namespace = format!("{tag}{pid}-{n}");
    let base = s.mysql.url.rsplit_once('/').unwrap().0.to_owned();
    s.mysql.url = format!("{base}/fs_{tag}_{pid}_{n}");
    s
}

/// How long a test may run before its binary is stopped (`FLASHSALE_TEST_LIMIT_SECS`).
const TEST_LIMIT_SECS: u64 = 300;

/// Watches the calling test: one still running after [`TEST_LIMIT_SECS`] stops its
/// whole test binary, naming it, so a test that hangs fails the suite within minutes
/// instead of holding it until CI's own limit. The watch ends with the test's thread
/// (libtest runs each test on a thread named after it; on any other thread, a bench's
/// main, nothing is watched).
fn watch_this_test() {
    thread_local! {
        static WATCH: Option<std::sync::mpsc::Sender<()>> = start_watch();
    }
    WATCH.with(|_| {});
}

fn start_watch() -> Option<std::sync::mpsc::Sender<()>> {
    let name = std::thread::current().name().filter(|n| *n != "main")?.to_owned();
    let secs = std::env::var("FLASHSALE_TEST_LIMIT_SECS").ok().and_then(|v| v.parse().ok());
    let limit = std::time::Duration::from_secs(secs.unwrap_or(TEST_LIMIT_SECS));
    // Dropped with the thread's locals when the test returns or panics: the watcher
    // then sees the channel closed and ends.
    let (done, ended) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(limit) {
            // Straight to the process's stderr: `eprintln!` here would go to the test's
            // captured output, which is never printed once the binary stops.
            let _ = writeln!(
                std::io::stderr(),
                "test {name} still running after {limit:?}: stopping the test binary"
            );
            std::process::exit(101);
        }
    });
    Some(done)
}

/// Removes what a test made: its MySQL database, its Redis keys, its RabbitMQ queues
/// and exchanges. Never waits long on what a failed test left behind.
pub async fn cleanup(settings: &Settings) {
    bounded("dropping its database", drop_database(&settings.mysql.url)).await;
    bounded("deleting its Redis keys", delete_keys(&settings.redis, &settings.namespace)).await;
    bounded("deleting its queues", delete_broker_objects(&settings.amqp.url, &settings.namespace)).await;
}

/// One clean-up step, given up after [`CLEANUP_STEP_LIMIT`]: what it leaves is in the
/// test's own namespace and database, harmless to the others.
async fn bounded(what: &str, step: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(CLEANUP_STEP_LIMIT, step).await.is_err() {
        let _ = writeln!(std::io::stderr(), "clean-up: {what} took over {CLEANUP_STEP_LIMIT:?}; left");
    }
}

const CLEANUP_STEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Drops the database `url` names.
pub async fn drop_database(url: &str) {
    use sqlx::Connection;
    let (base, name) = url.rsplit_once('/').unwrap();
    if let Ok(mut c) = sqlx::MySqlConnection::connect(&format!("{base}/mysql")).await {
        let _ = sqlx::query("SET SESSION lock_wait_timeout = 2").execute(&mut c).await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`")).execute(&mut c).await;
    }
}

/// Deletes every Redis key of `namespace`, on the one Redis or on every node of the
/// cluster the settings name. SCAN, not KEYS: KEYS blocks Redis for the whole keyspace
/// (a second per few million keys), which times out the calls of every test running
/// beside this one. One UNLINK per key: on a cluster node, keys of several slots
/// cannot share a command.
pub async fn delete_keys(redis: &RedisSettings, namespace: &str) {
    delete_keys_matching(redis, &format!("{namespace}:*")).await;
}

/// Deletes every key of one campaign shard (`tag`: the campaign id for shard 0), on
/// whichever node holds it: what that shard looks like after its master restarted
/// with no data. All at once, as a restart loses them: deleted key by key, a rebuild
/// that began once the meta was gone would have keys it just wrote deleted behind it.
pub async fn lose_shard(redis: &RedisSettings, namespace: &str, tag: &str) {
    let pattern = format!("{namespace}:{{c:{tag}}}:*");
    for node in redis.nodes() {
        wipe_and_restore(node.as_str(), &pattern, &[]).await;
    }
}

/// Runs [`WIPE_AND_RESTORE`] on the Redis at `url`: the keys matching `pattern` go,
/// those of `snap` come back.
async fn wipe_and_restore(url: &str, pattern: &str, snap: &[(String, Vec<u8>, i64)]) {
    let mut conn = patient_connection(url).await;
    let wipe = redis::Script::new(WIPE_AND_RESTORE);
    let mut script = wipe.prepare_invoke();
    script.arg(pattern);
    for (k, dump, ttl) in snap {
        script.arg(k).arg((*ttl).max(0)).arg(dump.as_slice());
    }
    let _: u64 = script.invoke_async(&mut conn).await.unwrap();
}

/// A connection for the scripts here, which scan the whole keyspace of a Redis that
/// every test shares: the client's default reply timeout (500 ms) is too short for that
/// on a loaded machine.
async fn patient_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let limit = Some(std::time::Duration::from_secs(10));
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(limit).set_response_timeout(limit);
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection_with_config(&config).await.unwrap()
}

/// In one script, so nothing runs in between: deletes every key of the node matching
/// `ARGV[1]`, then restores the keys given as (name, time to live, dump) triples after
/// it. Answers how many keys it deleted.
const WIPE_AND_RESTORE: &str = r"
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    redis.call('DEL', k)
    n = n + 1
  end
until cursor == '0'
for i = 2, #ARGV, 3 do
  redis.call('RESTORE', ARGV[i], ARGV[i + 1], ARGV[i + 2], 'REPLACE')
end
return n
";

/// Every key of one campaign shard as it is now (`DUMP` and time to live), to put back
/// with [`roll_back_shard`]: what a replica that missed the writes after this moment
/// holds when it takes over. One Redis only.
pub async fn snapshot_shard(
    redis: &RedisSettings,
    namespace: &str,
    tag: &str,
) -> Vec<(String, Vec<u8>, i64)> {
    let mut conn = patient_connection(redis.url.as_str()).await;
    let keys = keys_matching(&mut conn, &format!("{namespace}:{{c:{tag}}}:*")).await;
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
    }
    let dumped: Vec<(Option<Vec<u8>>, i64)> = pipe.query_async(&mut conn).await.unwrap();
    keys.into_iter().zip(dumped).filter_map(|(k, (dump, ttl))| Some((k, dump?, ttl))).collect()
}

/// Puts one campaign shard back as [`snapshot_shard`] saw it, in one script: keys
/// written since are gone, the others hold their old values (a stream its old entries
/// and its old last id). One Redis only.
pub async fn roll_back_shard(
    redis: &RedisSettings,
    namespace: &str,
    tag: &str,
    snap: &[(String, Vec<u8>, i64)],
) {
    wipe_and_restore(redis.url.as_str(), &format!("{namespace}:{{c:{tag}}}:*"), snap).await;
}

/// [`delete_keys`] for any SCAN pattern.
pub async fn delete_keys_matching(redis: &RedisSettings, pattern: &str) {
    for node in redis.nodes() {
        let Ok(client) = redis::Client::open(node.as_str()) else { continue };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> =
                scan_matching(cursor, pattern).query_async(&mut conn).await
            else {
                break;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = unlink_each(&keys).query_async(&mut conn).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// [`delete_keys`] for a `Drop` (no runtime needed).
pub fn delete_keys_blocking(redis: &RedisSettings, namespace: &str) {
    for node in redis.nodes() {
        let Ok(client) = redis::Client::open(node.as_str()) else { continue };
        let Ok(mut conn) = client.get_connection() else { continue };
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> =
                scan(cursor, namespace).query(&mut conn)
            else {
                break;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = unlink_each(&keys).query(&mut conn);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

fn unlink_each(keys: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("UNLINK").arg(k).ignore();
    }
    pipe
}

fn scan(cursor: u64, namespace: &str) -> redis::Cmd {
    scan_matching(cursor, &format!("{namespace}:*"))
}

fn scan_matching(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
    cmd
}

/// Every key matching `pattern` on one connection, by SCAN (see [`delete_keys`] for why
/// not KEYS). Panics on a Redis error: for tests.
pub async fn keys_matching(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) =
            scan_matching(cursor, pattern).query_async(conn).await.expect("SCAN");
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Deletes the queues and exchanges a worker of `namespace` declares.
pub async fn delete_broker_objects(amqp_url: &str, namespace: &str) {
    use lapin::{Connection, ConnectionProperties};
    let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await else { return };
    if let Ok(ch) = conn.create_channel().await {
        for q in
            ["orders", "dead", "timeouts", "retry", "delay.1", "delay.2", "delay.3", "delay.10", "delay.900"]
        {
            let _ = ch.queue_delete(format!("{namespace}.{q}").as_str().into(), Default::default()).await;
        }
        for x in ["orders", "dlx", "timeouts"] {
            let _ = ch.exchange_delete(format!("{namespace}.{x}").as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

/// How many orders MySQL holds for `campaign`.
pub async fn count_orders(pool: &sqlx::MySqlPool, campaign: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE campaign_id = ?")
        .bind(campaign)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The `Flashsale-Signature` header a payment provider would send for `body` at `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A storefront JWT (HS256) with these claims.
pub fn token(secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
