//! Starting and stopping the worker's tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use common::config::Settings;
use engine::Engine;
use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};
use ledger::Db;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::{pause, Ctx};
use crate::error::{bounded, Result};
use crate::metrics::Metrics;
use crate::topology::{self, DelayQueues, Names};
use crate::{dead, expiry, persister, reconcile, relay, restore, retire};

/// A running worker (tests start several in one process).
pub struct Running {
    pub metrics_addr: SocketAddr,
    pub ctx: Arc<Ctx>,
    tasks: serve::Tasks,
}

impl Running {
    /// Asks every task to finish its current batch, then waits for them.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }
}

pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(settings.worker.metrics_listen).await?;
    let db = Db::connect_retrying(&settings.mysql, ledger::db::STARTUP_PATIENCE).await?;
    let engine = Engine::start(&settings)?;
    let ctx = Arc::new(Ctx {
        activity: Default::default(),
        names: Names::new(&settings.namespace),
        consumer: format!("worker-{}-{}", std::process::id(), engine::clock::now_ms()),
        metrics: Metrics::new()?,
        delay_queues: DelayQueues::default(),
        restore_now: tokio::sync::Notify::new(),
        engine,
        db,
        settings,
    });
    let (mut tasks, stopped) = serve::Tasks::new();
    let metrics_addr = listener.local_addr()?;

    let app = Router::new()
        .route("/metrics", get(|State(c): State<Arc<Ctx>>| async move { c.metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::clone(&ctx));
    tasks.push(serve::until_stopped("metrics", listener, app, stopped.clone()));
    let (c, rx) = (Arc::clone(&ctx), stopped.clone());
    tasks.push(tokio::spawn(async move { broker_loop(&c, rx).await }));
    let (c, rx) = (Arc::clone(&ctx), stopped.clone());
    tasks.push(tokio::spawn(async move { expiry::sweep_redis(&c, rx).await }));
    let (c, rx) = (Arc::clone(&ctx), stopped.clone());
    tasks.push(tokio::spawn(async move { expiry::sweep_mysql(&c, rx).await }));
    let (c, rx) = (Arc::clone(&ctx), stopped.clone());
    tasks.push(tokio::spawn(async move { reconcile::run(&c, rx).await }));
    let (c, rx) = (Arc::clone(&ctx), stopped.clone());
    tasks.push(tokio::spawn(async move { restore::run(&c, rx).await }));
    let (c, rx) = (Arc::clone(&ctx), stopped);
    tasks.push(tokio::spawn(async move { retire::run(&c, rx).await }));
    tracing::info!(%metrics_addr, consumer = %ctx.consumer, "sync-worker running");
    Ok(Running { metrics_addr, ctx, tasks })
}

/// Connects to the broker and runs the relay, the persister and the timer consumer
/// until one fails (then reconnects with backoff) or the worker stops.
async fn broker_loop(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let mut backoff = common::backoff::DEPENDENCY;
    loop {
        match run_broker_tasks(ctx, stop.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "broker session ended; reconnecting"),
        }
        if pause(backoff.next_pause(), &mut stop).await {
            return;
        }
    }
}

async fn run_broker_tasks(ctx: &Ctx, stop: watch::Receiver<bool>) -> Result<()> {
    let limit = ctx.broker_timeout();
    let conn = bounded(
        limit,
        "connect",
        Connection::connect(&ctx.settings.amqp.url, ConnectionProperties::default()),
    )
    .await?;
    let declare_ch = bounded(limit, "channel", conn.create_channel()).await?;
    let w = &ctx.settings.worker;
    topology::declare(&declare_ch, &ctx.names, w.max_deliveries, w.persist_retry_ms, limit).await?;
    ctx.delay_queues.forget().await;
    let relay_ch = bounded(limit, "channel", conn.create_channel()).await?;
    bounded(limit, "confirm.select", relay_ch.confirm_select(ConfirmSelectOptions::default())).await?;
    let persist_ch = bounded(limit, "channel", conn.create_channel()).await?;
    let timer_ch = bounded(limit, "channel", conn.create_channel()).await?;
    bounded(limit, "confirm.select", timer_ch.confirm_select(ConfirmSelectOptions::default())).await?;
    let timeout_ch = bounded(limit, "channel", conn.create_channel()).await?;
    let dead_ch = bounded(limit, "channel", conn.create_channel()).await?;
    let replay_ch = bounded(limit, "channel", conn.create_channel()).await?;
    bounded(limit, "confirm.select", replay_ch.confirm_select(ConfirmSelectOptions::default())).await?;
    tracing::info!("broker connected; topology declared");
    let result = tokio::try_join!(
        relay::run(ctx, &relay_ch, stop.clone()),
        persister::run(ctx, &persist_ch, &timer_ch, stop.clone()),
        expiry::consume_timers(ctx, &timeout_ch, stop.clone()),
        dead::keep(ctx, &dead_ch, stop.clone()),
        dead::replay(ctx, &replay_ch, stop),
    );
    let _ = tokio::time::timeout(limit, conn.close(200, "shutting down".into())).await;
    result.map(|_| ())
}
