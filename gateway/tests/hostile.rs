//! Hostile input: arbitrary bytes into the order parser and the signature check (never a
//! panic, never an acceptance that should not be), absurd values through HTTP that must
//! change nothing, and 10,000 connections held open against the gateway binary.
//! `FLASHSALE_FUZZ_CASES` raises the number of proptest cases (default 2,000).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use gateway::auth::verify_signature;
use gateway::routes::orders::parse_order;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::json;
use support::*;
use testkit::sign;

fn cases() -> u32 {
    std::env::var("FLASHSALE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any body, key and path id: an answer, never a panic; what is accepted obeys the contract.
    #[test]
    fn order_parsing_survives_any_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        key in proptest::collection::vec(any::<u8>(), 0..160),
        campaign in ".{0,80}",
    ) {
        let key = HeaderValue::from_bytes(&key).ok();
        if let Ok(p) = parse_order(campaign.clone(), key.as_ref(), &body) {
            prop_assert!((1..=16).contains(&p.lines.len()));
            prop_assert!(p.lines.iter().all(|l| l.quantity >= 1));
            prop_assert!(campaign.len() <= 64);
        }
    }

    /// JSON-shaped bodies with arbitrary lines: accepted only when the contract allows.
    #[test]
    fn order_lines_are_accepted_only_within_the_contract(
        lines in proptest::collection::vec(("[a-z0-9é_-]{0,70}", any::<i128>()), 0..20),
    ) {
        let items: Vec<String> = lines.iter().map(|(s, q)| format!(r#"{{"sku_id":{},"quantity":{q}}}"#, json!(s))).collect();
        let body = format!(r#"{{"items":[{}]}}"#, items.join(","));
        let ok = parse_order("c".into(), Some(&HeaderValue::from_static("k")), body.as_bytes()).is_ok();
        let distinct = lines.iter().map(|(s, _)| s).collect::<std::collections::HashSet<_>>().len() == lines.len();
        let valid = (1..=16).contains(&lines.len())
            && distinct
            && lines.iter().all(|(s, q)| {
                (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    && *q >= 1 && *q <= i128::from(engine::domain::MAX_QUANTITY)
            });
        prop_assert_eq!(ok, valid, "{}", body);
    }

    /// Any signature header: refused unless it carries the right HMAC for the body.
    #[test]
    fn signature_header_survives_any_bytes(header in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..128)) {
        let now = 1_800_000_000;
        prop_assert!(verify_signature(Some(&header), &body, "secret", now, 300).is_err());
        let good = sign("secret", now, &body);
        prop_assert!(verify_signature(Some(&good), &body, "secret", now, 300).is_ok());
        prop_assert!(verify_signature(Some(&good), &[body.as_slice(), b"x"].concat(), "secret", now, 300).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_values_get_contract_errors_and_change_nothing() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 5, "price_cents": 100}]), 2)).await;
    let huge = [
        json!([{"sku_id": "a", "quantity": 0}]),
        json!([{"sku_id": "a", "quantity": -5}]),
        json!([{"sku_id": "a", "quantity": 1.5}]),
        json!([{"sku_id": "a", "quantity": "1"}]),
        json!([{"sku_id": "a", "quantity": 18446744073709551616u128.to_string().parse::<f64>().unwrap()}]),
        json!([{"sku_id": "a", "quantity": 1}, {"sku_id": "a", "quantity": 1}]),
        json!([{"sku_id": "ä", "quantity": 1}]),
        json!([{"sku_id": "a\u{0}", "quantity": 1}]),
        json!([{"sku_id": "💥", "quantity": 1}]),
        json!([{"sku_id": "x".repeat(65), "quantity": 1}]),
        json!([]),
    ];
    for items in huge {
        let (s, v) = env.order("c", "u1", "k1", items.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{items}");
    }
    // Past the largest quantity (the largest stock): refused as input.
    let (s, v) = env.order("c", "u1", "k2", json!([{"sku_id": "a", "quantity": u64::MAX}])).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{v}");
    // Valid shapes that cannot be served: the biggest quantity, an unknown unicode-free
    // sku, a campaign id outside the alphabet.
    let (s, v) =
        env.order("c", "u1", "k2", json!([{"sku_id": "a", "quantity": engine::domain::MAX_QUANTITY}])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = env.order("c", "u1", "k3", json!([{"sku_id": "nope", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "sku_not_found"));
    let (s, v) = env.order("ç%C3%A7", "u1", "k4", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));
    for key in ["", "ключ", &"k".repeat(129), "a b"] {
        let res = env
            .http
            .post(env.url(0, "/api/v1/campaigns/c/orders"))
            .bearer_auth(env.token("u1"))
            .header("Idempotency-Key", key.as_bytes())
            .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
            .send()
            .await;
        if let Ok(res) = res {
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "key {key:?}");
        }
    }
    let item = env.item("c", "a").await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64()),
        (Some(5), Some(0)),
        "nothing changed"
    );
    env.cleanup().await;
}

/// The gateway binary on a port of its own, killed when dropped (also when a test's
/// assertion fails, so no gateway outlives its test).
struct GatewayProcess {
    child: std::process::Child,
    base: String,
}

impl GatewayProcess {
    /// Starts it with the test settings' namespace and database, `env` on top, its
    /// output to `log` (or nowhere), and waits until it answers `/healthz`.
    async fn start(
        settings: &common::config::Settings,
        env: &[(&str, String)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.env("FLASHSALE__NAMESPACE", &settings.namespace)
            .env("FLASHSALE__MYSQL__URL", &settings.mysql.url)
            .env("FLASHSALE__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
            .env("FLASHSALE__GATEWAY__METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "error");
        for (k, v) in env {
            cmd.env(k, v);
        }
        match log {
            Some(path) => cmd
                .stdout(std::fs::File::create(path).unwrap())
                .stderr(std::fs::File::options().append(true).open(path).unwrap()),
            None => cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()),
        };
        let me = Self { child: cmd.spawn().unwrap(), base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{}/healthz", me.base)).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "gateway did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        me
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 10,000 connections held open (half with a request begun and never finished) against
/// the gateway binary: it keeps answering others promptly and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_held_connections_neither_block_nor_bloat_the_gateway() {
    use tokio::io::AsyncWriteExt;
    let settings = test_settings();
    let gateway = GatewayProcess::start(&settings, &[], None).await;
    let (base, port) = (gateway.base.clone(), gateway.port());
    let http = reqwest::Client::new();
    let before = rss_kib(gateway.child.id());
    let mut held = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(mut s) => {
                if i % 2 == 0 {
                    let _ = s
                        .write_all(
                            b"POST /api/v1/campaigns/c/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n",
                        )
                        .await;
                }
                held.push(s);
            }
            Err(e) => panic!("connection {i} refused: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = Instant::now();
    let res = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(took.elapsed() < Duration::from_secs(1), "answered in {:?} with 10,000 held", took.elapsed());
    let during = rss_kib(gateway.child.id());
    assert!(during - before.min(during) < 256 * 1024, "RSS grew from {before} KiB to {during} KiB");
    drop(held);
    drop(gateway);
    cleanup_settings(&settings).await;
    eprintln!("RSS {before} KiB → {during} KiB with 10,000 connections held");
}

/// No token ever reaches the logs: the gateway binary, logging everything it logs at
/// `debug`, is sent operators' tokens (right and wrong), a storefront JWT, a signed
/// callback and failing requests; none of the secrets is anywhere in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_is_ever_logged() {
    let settings = test_settings();
    let log =
        std::env::temp_dir().join(format!("gateway-log-{}-{}.txt", std::process::id(), settings.namespace));
    let (alice, wrong) = ("alice-secret-token-0123456", "alice-secret-token-6543210");
    let env = [
        ("FLASHSALE__ADMIN__TOKENS", format!("alice:{alice}")),
        ("FLASHSALE__AUTH__JWT_SECRET", "jwt-secret-never-logged".to_owned()),
        ("FLASHSALE__PAYMENTS__WEBHOOK_SECRET", "webhook-secret-never-logged".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let gateway = GatewayProcess::start(&settings, &env, Some(&log)).await;
    let (base, http) = (gateway.base.clone(), reqwest::Client::new());
    let c = campaign("secrets", json!([{"sku_id": "a", "stock": 5, "price_cents": 100}]), 2);
    let launched =
        http.post(format!("{base}/admin/v1/campaigns")).bearer_auth(alice).json(&c).send().await.unwrap();
    assert_eq!(launched.status(), StatusCode::CREATED);
    let refused = http.get(format!("{base}/admin/v1/campaigns")).bearer_auth(wrong).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let jwt = token_with("jwt-secret-never-logged", json!({"sub": "buyer", "exp": now_secs() + 600}));
    let ordered = http
        .post(format!("{base}/api/v1/campaigns/secrets/orders"))
        .bearer_auth(&jwt)
        .header("Idempotency-Key", "k1")
        .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ordered.status(), StatusCode::CREATED);
    let body =
        json!({"event_id": "e1", "order_id": "secrets.nope", "amount_cents": 100, "status": "succeeded"})
            .to_string();
    let sig = sign("webhook-secret-never-logged", now_secs(), body.as_bytes());
    let paid = http
        .post(format!("{base}/api/v1/payments/callback"))
        .header("Flashsale-Signature", &sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::NOT_FOUND);
    drop(gateway);
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.lines().count() > 5, "the run logged something: {text}");
    for secret in
        [alice, wrong, jwt.as_str(), "jwt-secret-never-logged", "webhook-secret-never-logged", sig.as_str()]
    {
        assert!(!text.contains(secret), "{secret:?} is in the gateway's log");
    }
    cleanup_settings(&settings).await;
}
