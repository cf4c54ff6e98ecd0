//! What every handler shares: settings, the engine, MySQL, the broker check, the
//! verifiers, metrics and limits. Cheap to clone.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::{ExposeSecret, Settings};
use engine::Engine;
use ledger::Db;
use tokio::sync::{Mutex, Semaphore};

use crate::auth::{Credentials, JwtVerifier};
use crate::metrics::Metrics;
use crate::user_rate::UserRates;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub settings: Settings,
    pub engine: Engine,
    pub db: Db,
    pub amqp: AmqpCheck,
    pub jwt: JwtVerifier,
    pub metrics: Metrics,
    pub user_rates: UserRates,
    /// One permit per request being handled (`gateway.max_in_flight`).
    pub(crate) in_flight: Semaphore,
    /// Whether MySQL holds a campaign Redis does not know, and when that was asked.
    launched: quick_cache::sync::Cache<String, (bool, Instant)>,
    /// Every operator's name and token (settings checked them at start-up).
    operators: Vec<common::config::OperatorToken>,
}

/// How long the answer to "was this campaign launched?" is reused: a campaign Redis does
/// not know costs one MySQL look-up per id per second at most.
const LAUNCHED_FRESH: Duration = Duration::from_secs(1);
/// Campaign ids whose answer is remembered at most.
const LAUNCHED_REMEMBERED: usize = 10_000;

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Credentials for AppState {
    fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    fn operators(&self) -> &[common::config::OperatorToken] {
        &self.operators
    }
}

impl AppState {
    /// Requests being handled now: read off the in-flight bound's permits when metrics
    /// are scraped, rather than kept in a gauge every request would write twice.
    pub fn requests_in_flight(&self) -> i64 {
        let max = self.settings.gateway.max_in_flight;
        i64::try_from(max.saturating_sub(self.in_flight.available_permits())).unwrap_or(i64::MAX)
    }

    /// Whether MySQL holds this campaign: asked when Redis does not know it, so that a
    /// campaign whose Redis data is being rebuilt answers 503, never 404.
    pub async fn launched(&self, campaign: &str) -> Result<bool, ledger::DbError> {
        if let Some((known, at)) = self.launched.get(campaign) {
            if at.elapsed() < LAUNCHED_FRESH {
                return Ok(known);
            }
        }
        let known = self.db.campaign_exists(campaign).await?;
        self.launched.insert(campaign.to_owned(), (known, Instant::now()));
        Ok(known)
    }

    /// Connects to MySQL (creating the database and migrating) and starts the engine.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let db = Db::connect_retrying(&settings.mysql, ledger::db::STARTUP_PATIENCE).await?;
        let engine = Engine::start(&settings)?;
        let auth = &settings.auth;
        let jwt = JwtVerifier::new(auth.jwt_secret.expose_secret(), auth.leeway_secs, auth.verified_tokens);
        let amqp = AmqpCheck::new(&settings.amqp.url, Duration::from_millis(settings.amqp.call_timeout_ms));
        let in_flight = Semaphore::new(settings.gateway.max_in_flight);
        Ok(Self(Arc::new(Shared {
            engine,
            db,
            amqp,
            jwt,
            metrics: Metrics::new()?,
            user_rates: UserRates::default(),
            in_flight,
            launched: quick_cache::sync::Cache::new(LAUNCHED_REMEMBERED),
            operators: settings.admin.operators().map_err(|e| anyhow::anyhow!("admin.tokens: {e}"))?,
            settings,
        })))
    }
}

/// Whether RabbitMQ answers (readiness): one connection, reopened when lost, and a
/// real round trip on it (a channel opened and closed) every check, bounded by the
/// AMQP call timeout: a connection that still claims to be open proves nothing when
/// the broker is blackholed.
pub struct AmqpCheck {
    url: String,
    timeout: Duration,
    conn: Mutex<Option<lapin::Connection>>,
}

impl AmqpCheck {
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self { url: url.to_owned(), timeout, conn: Mutex::new(None) }
    }

    pub async fn check(&self) -> Result<(), String> {
        let mut conn = self.conn.lock().await;
        let result = tokio::time::timeout(self.timeout, async {
            if !conn.as_ref().is_some_and(|c| c.status().connected()) {
                let fresh =
                    lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()).await?;
                *conn = Some(fresh);
            }
            if let Some(c) = conn.as_ref() {
                let ch = c.create_channel().await?;
                ch.close(200, "readiness".into()).await?;
            }
            Ok::<(), lapin::Error>(())
        })
        .await;
        let outcome = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        // A connection that failed a round trip is not trusted again.
        *conn = None;
        Err(outcome)
    }
}
