//! Layered settings: the embedded `config/default.toml`, then an optional file
//! (`--config PATH` or `FLASHSALE_CONFIG`), then `FLASHSALE__<SECTION>__<KEY>`
//! environment variables. Unknown keys and invalid values are errors naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The defaults, compiled in so a binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "FLASHSALE__";
/// Environment variable naming an extra settings file.
pub const CONFIG_FILE_ENV: &str = "FLASHSALE_CONFIG";
/// Exit code of a process that stops on bad settings (EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// Secrets that must not reach production; a warning is logged while one is in use.
const DEV_SECRETS: [&str; 4] =
    ["dev-jwt-secret", "dev-admin-token", "dev-webhook-secret", "dev-order-id-secret"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub namespace: String,
    pub gateway: GatewaySettings,
    pub worker: WorkerSettings,
    pub redis: RedisSettings,
    pub mysql: MysqlSettings,
    pub amqp: AmqpSettings,
    pub auth: AuthSettings,
    pub admin: AdminSettings,
    pub payments: PaymentSettings,
    pub engine: EngineSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub metrics_listen: SocketAddr,
    pub relay_batch_max: usize,
    pub relay_claim_idle_ms: u64,
    pub relay_pace_ms: u64,
    pub persist_batch_max: usize,
    pub persist_batch_wait_ms: u64,
    pub max_deliveries: u32,
    pub sweep_interval_ms: u64,
    pub reconcile_interval_ms: u64,
    pub persist_retry_ms: u64,
    pub persist_retry_max: u32,
    pub retain_finished_secs: u64,
    pub restore_check_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    /// Comma-separated seed nodes of a Redis Cluster; empty: one Redis at `url`.
    pub cluster_nodes: String,
    pub connections: usize,
    pub call_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Replicas that must hold a change before it is answered (`WAIT`); 0: none.
    pub replica_acks: u32,
    pub replica_ack_timeout_ms: u64,
    /// On a cluster, shards' own notices on per-shard channels (`SPUBLISH`); off:
    /// every notice broadcast (`PUBLISH`), as processes of earlier builds expect.
    pub shard_notices: bool,
}

impl RedisSettings {
    /// The Redis Cluster seed nodes (empty: not a cluster).
    pub fn cluster_seeds(&self) -> Vec<String> {
        self.cluster_nodes.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()
    }

    /// Every address a process may open a plain connection to (pub/sub, tests): the
    /// cluster's seeds, or the one Redis.
    pub fn nodes(&self) -> Vec<String> {
        let seeds = self.cluster_seeds();
        if seeds.is_empty() {
            vec![self.url.clone()]
        } else {
            seeds
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSettings {
    pub url: String,
    pub max_connections: u32,
    pub call_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: String,
    pub call_timeout_ms: u64,
    pub prefetch: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub leeway_secs: u64,
    /// Verified tokens remembered by a gateway (0: every token checked in full).
    pub verified_tokens: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub token: SecretString,
    /// `name:token` pairs, comma-separated: one operator each, beside `token` (the
    /// operator named `admin`).
    pub tokens: SecretString,
}

/// An operator's name and token.
pub type OperatorToken = (String, SecretString);

/// Names an operator may have (`[a-z0-9_-]`, 1 to 32), and the shortest token.
const OPERATOR_NAME_MAX: usize = 32;
const OPERATOR_TOKEN_MIN: usize = 16;

impl AdminSettings {
    /// Every operator with its token: `admin` (`admin.token`) first, then `admin.tokens`.
    pub fn operators(&self) -> Result<Vec<OperatorToken>, String> {
        let mut out = vec![("admin".to_owned(), self.token.clone())];
        for pair in self.tokens.expose_secret().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The message never repeats a token, only where the pair went wrong.
            let Some((name, token)) = pair.split_once(':') else {
                return Err(format!("operator {} is not a name:token pair", out.len()));
            };
            let name_ok = (1..=OPERATOR_NAME_MAX).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!("operator name {name:?} must be 1..={OPERATOR_NAME_MAX} of [a-z0-9_-]"));
            }
            if token.len() < OPERATOR_TOKEN_MIN {
                return Err(format!(
                    "operator {name}'s token must be at least {OPERATOR_TOKEN_MIN} characters"
                ));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("operator {name} is named twice"));
            }
            out.push((name.to_owned(), SecretString::from(token.to_owned())));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    pub webhook_secret: SecretString,
    pub signature_tolerance_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Keys the order ids derived from (campaign, user, idempotency key): every gateway
    /// must share it, and it must not change while an idempotency window is open.
    pub order_id_secret: SecretString,
    /// Also write each order's own idempotency record, as builds before derived order
    /// ids did: on during a rolling upgrade from such a build and while a rollback to
    /// one must stay safe (their gateways find a retry's order only through it).
    pub idempotency_records: bool,
    /// Reservations travel to MySQL as compact rows (version 3 order messages) instead
    /// of whole events (version 2): off during a rolling upgrade from a build before it,
    /// whose workers read only version 2.
    pub compact_events: bool,
    /// Campaigns launched (and shards rebuilt) from now on keep their users' units in one
    /// hash per shard (meta `layout` 2) instead of a string per user and a buyer set:
    /// off during a rolling upgrade from a build before it, whose scripts know only the
    /// strings.
    pub users_hash: bool,
    pub sold_out_ttl_ms: u64,
    pub campaign_refresh_ms: u64,
    pub idempotency_ttl_secs: u64,
    pub outbox_max_len: u64,
    pub payment_event_ttl_secs: u64,
    pub reserve_batch_max: usize,
    /// Script calls of one campaign shard one process has out at once.
    pub reserve_calls_in_flight: usize,
}

impl RedisSettings {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

impl Settings {
    /// Loads the layers in order: defaults, then `file` (or the file named by
    /// `FLASHSALE_CONFIG`), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file: Option<PathBuf> =
            file.map(Path::to_path_buf).or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!("settings file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::from_figment(figment.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Extracts and validates settings from any set of layers (tests build their own).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(describe)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        let ns_ok = (1..=32).contains(&self.namespace.len())
            && self.namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ns_ok {
            return bad("namespace", "must be 1..=32 characters of [A-Za-z0-9_-]");
        }
        let positive = [
            ("gateway.max_in_flight", self.gateway.max_in_flight as u64),
            ("gateway.request_timeout_ms", self.gateway.request_timeout_ms),
            ("worker.relay_batch_max", self.worker.relay_batch_max as u64),
            ("worker.persist_batch_max", self.worker.persist_batch_max as u64),
            ("worker.max_deliveries", u64::from(self.worker.max_deliveries)),
            ("worker.sweep_interval_ms", self.worker.sweep_interval_ms),
            ("worker.reconcile_interval_ms", self.worker.reconcile_interval_ms),
            ("worker.persist_retry_ms", self.worker.persist_retry_ms),
            ("worker.persist_retry_max", u64::from(self.worker.persist_retry_max)),
            ("worker.retain_finished_secs", self.worker.retain_finished_secs),
            ("worker.restore_check_ms", self.worker.restore_check_ms),
            ("redis.connections", self.redis.connections as u64),
            ("redis.call_timeout_ms", self.redis.call_timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.replica_ack_timeout_ms", self.redis.replica_ack_timeout_ms),
            ("mysql.max_connections", u64::from(self.mysql.max_connections)),
            ("mysql.call_timeout_ms", self.mysql.call_timeout_ms),
            ("amqp.call_timeout_ms", self.amqp.call_timeout_ms),
            ("amqp.prefetch", u64::from(self.amqp.prefetch)),
            ("engine.sold_out_ttl_ms", self.engine.sold_out_ttl_ms),
            ("engine.campaign_refresh_ms", self.engine.campaign_refresh_ms),
            ("engine.idempotency_ttl_secs", self.engine.idempotency_ttl_secs),
            ("engine.outbox_max_len", self.engine.outbox_max_len),
            ("engine.payment_event_ttl_secs", self.engine.payment_event_ttl_secs),
            ("engine.reserve_batch_max", self.engine.reserve_batch_max as u64),
            ("engine.reserve_calls_in_flight", self.engine.reserve_calls_in_flight as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(key, "must be greater than 0");
        }
        // A sold-out flag or a campaign window older than a second would break the
        // promise that releases and tuning reach every gateway within 1 s.
        for (key, v) in [
            ("engine.sold_out_ttl_ms", self.engine.sold_out_ttl_ms),
            ("engine.campaign_refresh_ms", self.engine.campaign_refresh_ms),
        ] {
            if v > 1000 {
                return bad(key, "must be at most 1000 (changes must reach every gateway within 1 s)");
            }
        }
        if self.redis.cluster_seeds().iter().any(|n| !n.starts_with("redis://")) {
            return bad("redis.cluster_nodes", "must be comma-separated redis://host:port seed nodes");
        }
        if let Err(e) = self.admin.operators() {
            return bad("admin.tokens", &e);
        }
        for (key, v) in [
            ("redis.url", self.redis.url.as_str()),
            ("mysql.url", self.mysql.url.as_str()),
            ("amqp.url", self.amqp.url.as_str()),
            ("auth.jwt_secret", self.auth.jwt_secret.expose_secret()),
            ("admin.token", self.admin.token.expose_secret()),
            ("payments.webhook_secret", self.payments.webhook_secret.expose_secret()),
            ("engine.order_id_secret", self.engine.order_id_secret.expose_secret()),
        ] {
            if v.trim().is_empty() {
                return bad(key, "must not be empty");
            }
        }
        Ok(())
    }

    /// The names of the secrets still at their development defaults.
    pub fn dev_secrets_in_use(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for ((key, secret), dev) in [
            ("auth.jwt_secret", &self.auth.jwt_secret),
            ("admin.token", &self.admin.token),
            ("payments.webhook_secret", &self.payments.webhook_secret),
            ("engine.order_id_secret", &self.engine.order_id_secret),
        ]
        .into_iter()
        .zip(DEV_SECRETS)
        {
            if secret.expose_secret() == dev {
                out.push(key);
            }
        }
        out
    }
}

/// One line per problem, each naming the key (`section.key`).
fn describe(err: figment::Error) -> ConfigError {
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| {
            let mut path = e.path.join(".");
            if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                // figment's path sometimes ends with the field already, sometimes not.
                if e.path.last() != Some(field) {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(field);
                }
                return format!("{path}: unknown key");
            }
            if path.is_empty() {
                e.kind.to_string()
            } else {
                format!("{path}: {}", e.kind)
            }
        })
        .collect();
    ConfigError::Invalid(lines.join("; "))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its own large error
mod tests {
    use super::*;
    use figment::Jail;

    fn load_with_env(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            out = Settings::load(None).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn operators_are_name_token_pairs_checked_at_start_up() {
        let s = load_with_env(&[(
            "FLASHSALE__ADMIN__TOKENS",
            "alice:alice-token-0123456, bob:bob-token-01234567",
        )])
        .unwrap();
        let ops = s.admin.operators().unwrap();
        let names: Vec<&str> = ops.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["admin", "alice", "bob"]);
        assert_eq!(ops[2].1.expose_secret(), "bob-token-01234567");
        for (bad, why) in [
            ("alice:short", "at least 16"),
            ("Alice:alice-token-0123456", "must be 1..=32"),
            ("alice-token-0123456", "not a name:token pair"),
            ("alice:alice-token-0123456,alice:other-token-0123456", "named twice"),
        ] {
            let err = load_with_env(&[("FLASHSALE__ADMIN__TOKENS", bad)]).unwrap_err();
            assert!(err.contains("admin.tokens") && err.contains(why), "{bad}: {err}");
            assert!(!err.contains("token-0123456"), "no token in the message: {err}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load_with_env(&[]).unwrap();
        assert_eq!(s.namespace, "fs");
        assert_eq!(s.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.gateway.metrics_listen.to_string(), "127.0.0.1:9898");
        assert_eq!(s.worker.metrics_listen.to_string(), "127.0.0.1:9899");
        assert_eq!(s.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(s.mysql.url, "mysql://root@127.0.0.1:3306/flashsale");
        assert_eq!(s.amqp.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.dev_secrets_in_use().len(), 4);
        assert!(!s.engine.idempotency_records);
        assert!(s.engine.users_hash);
    }

    #[test]
    fn cluster_seeds_come_comma_separated() {
        let s = load_with_env(&[]).unwrap();
        assert!(s.redis.cluster_seeds().is_empty());
        assert_eq!(s.redis.nodes(), vec!["redis://127.0.0.1:6379".to_owned()]);
        let nodes = "redis://127.0.0.1:55001, redis://127.0.0.1:55002,redis://127.0.0.1:55003";
        let s = load_with_env(&[("FLASHSALE__REDIS__CLUSTER_NODES", nodes)]).unwrap();
        assert_eq!(s.redis.cluster_seeds().len(), 3);
        assert_eq!(s.redis.nodes()[1], "redis://127.0.0.1:55002");
        let err = load_with_env(&[("FLASHSALE__REDIS__CLUSTER_NODES", "127.0.0.1:55001")]).unwrap_err();
        assert!(err.contains("redis.cluster_nodes"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = load_with_env(&[("FLASHSALE__ADMIN__TOKEN", "prod-token")]).unwrap();
        let shown = format!("{s:?}");
        for secret in ["prod-token", "dev-jwt-secret", "dev-webhook-secret", "dev-order-id-secret"] {
            assert!(!shown.contains(secret), "{secret} printed");
        }
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = load_with_env(&[
            ("FLASHSALE__NAMESPACE", "t1"),
            ("FLASHSALE__GATEWAY__LISTEN", "127.0.0.1:9000"),
            ("FLASHSALE__ENGINE__OUTBOX_MAX_LEN", "42"),
            ("FLASHSALE__ADMIN__TOKEN", "prod-token"),
        ])
        .unwrap();
        assert_eq!(s.namespace, "t1");
        assert_eq!(s.gateway.listen.port(), 9000);
        assert_eq!(s.engine.outbox_max_len, 42);
        assert_eq!(
            s.dev_secrets_in_use(),
            vec!["auth.jwt_secret", "payments.webhook_secret", "engine.order_id_secret"]
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_with_env(&[("FLASHSALE__GATEWAY__LISTN", "x")]).unwrap_err();
        assert_eq!(err, "configuration: gateway.listn: unknown key");
        let err = load_with_env(&[("FLASHSALE__COLOUR", "red")]).unwrap_err();
        assert_eq!(err, "configuration: colour: unknown key");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load_with_env(&[("FLASHSALE__GATEWAY__LISTEN", "not-an-address")]).unwrap_err();
        assert!(err.contains("gateway.listen"), "{err}");
        let err = load_with_env(&[("FLASHSALE__REDIS__CONNECTIONS", "0")]).unwrap_err();
        assert!(err.contains("redis.connections"), "{err}");
        let err = load_with_env(&[("FLASHSALE__NAMESPACE", "a:b")]).unwrap_err();
        assert!(err.contains("namespace"), "{err}");
        let err = load_with_env(&[("FLASHSALE__ENGINE__SOLD_OUT_TTL_MS", "5000")]).unwrap_err();
        assert!(err.contains("engine.sold_out_ttl_ms"), "{err}");
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("extra.toml", "namespace = \"fromfile\"\n[redis]\nconnections = 3\n")?;
            jail.set_env("FLASHSALE__REDIS__CONNECTIONS", "5");
            let s = Settings::load(Some(Path::new("extra.toml"))).unwrap();
            assert_eq!(s.namespace, "fromfile");
            assert_eq!(s.redis.connections, 5);
            Ok(())
        });
    }
}
