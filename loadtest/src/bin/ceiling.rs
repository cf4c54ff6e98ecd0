//! The ceilings the load-test runner measures beside the gateway, in the same run,
//! with the same load tool and connection count:
//!
//! - `ceiling constant LISTEN`: a bare axum handler answering every request with a
//!   constant JSON body (the most any HTTP path can do here; compare sold-out answers);
//! - `ceiling evalsha LISTEN [REDIS_URL]`: a bare axum handler running one EVALSHA of a
//!   trivial script per request on one shared multiplexed connection (the most a
//!   script-per-request path can do here; compare reservations).
//!
//! Both read the request body, as the gateway does, and ignore it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;

const BODY: &str = r#"{"error":{"code":"sold_out","message":"sku sku is sold out"}}"#;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, listen) = match args.as_slice() {
        [mode, listen, ..] => (mode.as_str(), listen.parse::<SocketAddr>().context("LISTEN address")?),
        _ => bail!("usage: ceiling constant|evalsha LISTEN [REDIS_URL]"),
    };
    let app = match mode {
        "constant" => Router::new().fallback(constant),
        "evalsha" => {
            let url = args.get(2).map_or("redis://127.0.0.1:6379", String::as_str);
            let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
            let script = redis::Script::new("return 1");
            // Load once so every request is a plain EVALSHA.
            let _: i64 = script.invoke_async(&mut conn.clone()).await?;
            Router::new().fallback(evalsha).with_state((conn, script))
        }
        other => bail!("unknown mode {other:?}: constant or evalsha"),
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ceiling {mode} listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn constant(_body: Bytes) -> impl IntoResponse {
    (StatusCode::CONFLICT, [(header::CONTENT_TYPE, "application/json")], BODY)
}

async fn evalsha(
    State((mut conn, script)): State<(redis::aio::MultiplexedConnection, redis::Script)>,
    _body: Bytes,
) -> impl IntoResponse {
    let mut call = redis::cmd("EVALSHA");
    call.arg(script.get_hash()).arg(0);
    match call.query_async::<i64>(&mut conn).await {
        Ok(_) => (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], BODY),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], BODY),
    }
}
