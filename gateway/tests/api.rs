//! The external contract (the API the storefront, operators and payment providers
//! rely on), row by row, against the real services.
#![allow(clippy::unwrap_used)]

mod support;

use common::config::ExposeSecret;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test]
async fn launch_validates_and_refuses_duplicates() {
    let env = Env::start().await;
    let ok = campaign("spring", json!([{"sku_id": "phone", "stock": 10, "price_cents": 99900}]), 2);
    let (s, v) = env.launch(ok.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "active");
    assert_eq!(v["items"][0]["available"], 10);
    assert_eq!(v["thresholds"], json!({"max_orders_per_sec": null, "max_user_requests_per_sec": null}));
    let (s, v) = env.launch(ok.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "campaign_exists"));

    // A worker's rebuild check can restore a campaign into Redis from the MySQL row a
    // launch has just written, before that launch reaches Redis: the launch that wrote
    // the row is still answered 201 (here: Redis holds "spring", MySQL's row is gone,
    // as between the two steps).
    let db = sqlx::MySqlPool::connect(&env.settings.mysql.url).await.unwrap();
    for table in ["campaign_items", "campaigns"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE campaign_id = 'spring'")).execute(&db).await.unwrap();
    }
    let (s, v) = env.launch(ok.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["items"][0]["available"], 10);
    let (s, v) = env.launch(ok.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "campaign_exists"));
    db.close().await;

    let mut bad = Vec::new();
    let mut b = campaign("x1", json!([]), 2);
    bad.push(b.clone());
    b = campaign(
        "x2",
        json!([{"sku_id": "a", "stock": 1, "price_cents": 1}, {"sku_id": "a", "stock": 1, "price_cents": 1}]),
        2,
    );
    bad.push(b);
    bad.push(campaign("x3", json!([{"sku_id": "a", "stock": -1, "price_cents": 1}]), 2));
    bad.push(campaign("x4", json!([{"sku_id": "a", "stock": 1, "price_cents": -1}]), 2));
    bad.push(campaign("x5", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 0));
    let mut w = campaign("x6", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1);
    w["payment_window_secs"] = json!(0);
    bad.push(w.clone());
    w["payment_window_secs"] = json!(86_401);
    bad.push(w);
    let mut e = campaign("x7", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1);
    e["ends_at"] = e["starts_at"].clone();
    bad.push(e);
    let mut u = campaign("x8", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1);
    u["is_admin"] = json!(true);
    bad.push(u);
    for shards in [json!(0), json!(65), json!(-1), json!("3")] {
        let mut sh = campaign("x9", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1);
        sh["shards"] = shards;
        bad.push(sh);
    }
    bad.push(campaign("bad id", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1));
    bad.push(campaign(
        engine::store::PROBE_CAMPAIGN,
        json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]),
        1,
    ));
    for body in bad {
        let (s, v) = env.launch(body.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    }
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/x1", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"), "refused launches left nothing");
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/x9", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"), "refused launches left nothing");

    // A sharded campaign: the view shows the sums, orders and cancels go to the shards.
    let mut sharded = campaign("split", json!([{"sku_id": "a", "stock": 64, "price_cents": 100}]), 100);
    sharded["shards"] = json!(64);
    let (s, v) = env.launch(sharded).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["items"][0]["stock_total"].clone(), v["items"][0]["available"].clone()),
        (json!(64), json!(64))
    );
    let (s, o) = env.order("split", "buyer", "k1", json!([{"sku_id": "a", "quantity": 40}])).await;
    assert_eq!(s, StatusCode::CREATED, "40 units gathered from the shards for one order: {o}");
    let item = env.item("split", "a").await;
    assert_eq!((item["available"].clone(), item["reserved"].clone()), (json!(24), json!(40)));
    let id = o["order_id"].as_str().unwrap();
    assert_eq!(env.cancel(0, "buyer", id).await.0, StatusCode::OK);
    assert_eq!(env.item("split", "a").await["available"], json!(64));
    let (s, v) = env.order("split", "other", "k1", json!([{"sku_id": "a", "quantity": 65}])).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sold_out"));
    // Over the limit is refused as such, whatever the stock (the limit comes first).
    let (s, v) = env.order("split", "other", "k2", json!([{"sku_id": "a", "quantity": 101}])).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "purchase_limit_exceeded"));
    // Tuning reaches every shard: whatever a buyer's home shard, the new limit holds.
    let (s, v) =
        env.admin(Method::PATCH, "/admin/v1/campaigns/split", Some(json!({"per_user_limit": 1}))).await;
    assert_eq!((s, v["per_user_limit"].clone()), (StatusCode::OK, json!(1)));
    for b in 0..8 {
        let (s, v) =
            env.order("split", &format!("t{b}"), "k1", json!([{"sku_id": "a", "quantity": 2}])).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "purchase_limit_exceeded"), "buyer t{b}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn ordering_follows_every_row_of_the_table() {
    let env = Env::start().await;
    env.launch(campaign(
        "c",
        json!([
            {"sku_id": "a", "stock": 5, "price_cents": 1000},
            {"sku_id": "b", "stock": 1, "price_cents": 250}
        ]),
        3,
    ))
    .await;

    // reserved, 201
    let (s, first) = env
        .order("c", "u1", "k1", json!([{"sku_id": "a", "quantity": 2}, {"sku_id": "b", "quantity": 1}]))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "pending_payment");
    assert_eq!(first["total_cents"], 2250);
    assert_eq!(first["campaign_id"], "c");
    assert!(first["expires_at"].as_str().unwrap().ends_with('Z'));
    // same key, same body: 200 with the same body
    let (s, again) = env
        .order("c", "u1", "k1", json!([{"sku_id": "a", "quantity": 2}, {"sku_id": "b", "quantity": 1}]))
        .await;
    assert_eq!((s, &again), (StatusCode::OK, &first));
    // same key, other body: 422
    let (s, v) = env.order("c", "u1", "k1", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
    // a line short: 409 sold_out naming the sku, nothing taken
    let (s, v) = env
        .order("c", "u2", "k", json!([{"sku_id": "a", "quantity": 1}, {"sku_id": "b", "quantity": 1}]))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sold_out"));
    assert!(v["error"]["message"].as_str().unwrap().contains('b'), "{v}");
    assert_eq!(env.item("c", "a").await["available"], 3);
    // over the per-user limit (3): u1 holds 3 units
    let (s, v) = env.order("c", "u1", "k2", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "purchase_limit_exceeded"));
    // unknown campaign or sku
    let (s, v) = env.order("nope", "u1", "k3", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));
    let (s, v) = env.order("c", "u1", "k3", json!([{"sku_id": "zz", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "sku_not_found"));
    // bad requests
    for items in [
        json!([]),
        json!([{"sku_id": "a", "quantity": 0}]),
        json!([{"sku_id": "a", "quantity": -1}]),
        json!([{"sku_id": "a", "quantity": 1}, {"sku_id": "a", "quantity": 1}]),
        json!((0..17).map(|i| json!({"sku_id": format!("s{i}"), "quantity": 1})).collect::<Vec<_>>()),
        json!([{"sku_id": "a", "quantity": "1"}]),
        json!([{"sku_id": "a", "quantity": 1, "price_cents": 1}]),
    ] {
        let (s, v) = env.order("c", "u3", "k", items.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{items}");
    }
    // missing or bad Idempotency-Key
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(env.token("u3"))
        .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (s, _) = env.order("c", "u3", "bad key!", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = env.order("c", "u3", &"k".repeat(129), json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    env.cleanup().await;
}

/// The order POST is taken ahead of the router when its campaign id has nothing to
/// decode; every other shape of that path is the router's. Both answer alike: the
/// same order replayed through either, the same errors, the same body limit, the
/// same metrics series.
#[tokio::test]
async fn the_order_route_taken_ahead_of_the_router_answers_as_the_router_would() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 2, "price_cents": 500}]), 2)).await;
    let post = |path: &str| {
        env.http.post(env.url(0, path)).bearer_auth(env.token("u")).header("Idempotency-Key", "k")
    };
    let items = json!({"items": [{"sku_id": "a", "quantity": 1}]});
    let (s, first) = decode(post("/api/v1/campaigns/c/orders").json(&items).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    // `%63` is `c`: the router's `Path` decodes it, and the same order is replayed.
    let (s, again) = decode(post("/api/v1/campaigns/%63/orders").json(&items).send().await.unwrap()).await;
    assert_eq!((s, &again["order_id"]), (StatusCode::OK, &first["order_id"]), "{again}");
    let (s, v) = decode(post("/api/v1/campaigns/nope/orders").json(&items).send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));
    // An empty id is left to the router, which takes it as a campaign nobody launched.
    let (s, v) = decode(post("/api/v1/campaigns//orders").json(&items).send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));
    let res = env.http.get(env.url(0, "/api/v1/campaigns/c/orders")).bearer_auth(env.token("u")).send().await;
    let (s, v) = decode(res.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let res = env.http.post(env.url(0, "/api/v1/campaigns/c/orders")).header("Idempotency-Key", "k");
    let (s, v) = decode(res.json(&items).send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    // Past the gateway's 64 KiB, under axum's own default of 2 MB: the limit is applied.
    let big = format!("{{\"items\":[{{\"sku_id\":\"{}\",\"quantity\":1}}]}}", "a".repeat(100_000));
    let res = post("/api/v1/campaigns/c/orders").header("content-type", "application/json").body(big);
    let (s, v) = decode(res.send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let metrics = env.metrics(0).await;
    let counted = |status: &str| {
        metrics.lines().any(|l| {
            l.starts_with("flashsale_http_requests_total{")
                && l.contains("route=\"/api/v1/campaigns/{campaign_id}/orders\"")
                && l.contains("method=\"POST\"")
                && l.contains(&format!("status=\"{status}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(counted("201") && counted("200") && counted("413"), "{metrics}");
    env.cleanup().await;
}

#[tokio::test]
async fn outside_the_window_is_not_active() {
    let env = Env::start().await;
    let mut later = campaign("later", json!([{"sku_id": "a", "stock": 5, "price_cents": 1}]), 1);
    later["starts_at"] = json!(rfc3339_in(3600));
    later["ends_at"] = json!(rfc3339_in(7200));
    assert_eq!(env.launch(later).await.0, StatusCode::CREATED);
    let (s, v) = env.order("later", "u", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "campaign_not_active"));
    let (_, v) = env.admin(Method::GET, "/admin/v1/campaigns/later", None).await;
    assert_eq!(v["status"], "scheduled");
    env.cleanup().await;
}

#[tokio::test]
async fn orders_are_visible_to_their_owner_only_and_cancel_twice_is_fine() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 2, "price_cents": 500}]), 2)).await;
    let (_, o) = env.order("c", "alice", "k", json!([{"sku_id": "a", "quantity": 2}])).await;
    let id = o["order_id"].as_str().unwrap().to_owned();
    let (s, v) = env.get_order("alice", &id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "pending_payment");
    assert_eq!(v["paid_at"], json!(null));
    assert!(v["created_at"].is_string());
    for (s, v) in [
        env.get_order("mallory", &id).await,
        env.cancel(0, "mallory", &id).await,
        env.get_order("alice", "c.0123456789abcdef0123456789abcdef").await,
        env.get_order("alice", "garbage").await,
    ] {
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "order_not_found"));
    }
    assert_eq!(env.item("c", "a").await["available"], 0);
    let (s, v) = env.cancel(0, "alice", &id).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(env.item("c", "a").await["available"], 2, "units released at once");
    let (s, v) = env.cancel(0, "alice", &id).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert_eq!(env.item("c", "a").await["available"], 2);
    // A paid order is not cancellable.
    let (_, o) = env.order("c", "bob", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
    let paid = o["order_id"].as_str().unwrap();
    assert_eq!(env.pay("evt-1", paid, 500, "succeeded").await.0, StatusCode::OK);
    let (s, v) = env.cancel(0, "bob", paid).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "order_not_cancellable"));
    // Units of the cancelled order no longer count against alice's limit.
    let (s, _) = env.order("c", "alice", "k2", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::CREATED);
    env.cleanup().await;
}

#[tokio::test]
async fn payments_follow_the_contract() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 5, "price_cents": 700}]), 5)).await;
    let (_, o) = env.order("c", "u", "k1", json!([{"sku_id": "a", "quantity": 2}])).await;
    let id = o["order_id"].as_str().unwrap().to_owned();

    let (s, v) = env.pay("e0", &id, 1399, "succeeded").await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "amount_mismatch"));
    let (s, v) = env.pay("e1", &id, 1400, "failed").await;
    assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("pending_payment")));
    let (s, v) = env.pay("e2", &id, 1400, "succeeded").await;
    assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("paid")));
    let (s, v) = env.pay("e2", &id, 1400, "succeeded").await;
    assert_eq!((s, v["result"].as_str()), (StatusCode::OK, Some("duplicate")));
    let (_, order) = env.get_order("u", &id).await;
    assert_eq!(order["status"], "paid");
    assert!(order["paid_at"].is_string());
    let item = env.item("c", "a").await;
    assert_eq!(
        (item["available"].as_i64(), item["reserved"].as_i64(), item["sold"].as_i64()),
        (Some(3), Some(0), Some(2))
    );

    // Late payment for a cancelled order: refund_required, units not taken again.
    let (_, o) = env.order("c", "u", "k2", json!([{"sku_id": "a", "quantity": 1}])).await;
    let late = o["order_id"].as_str().unwrap().to_owned();
    env.cancel(0, "u", &late).await;
    // An event id already used for another order: 409, and nothing changes.
    let (s, v) = env.pay("e2", &late, 700, "succeeded").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_id_conflict"));
    assert_eq!(env.get_order("u", &late).await.1["status"], "cancelled");
    let (s, v) = env.pay("e3", &late, 700, "succeeded").await;
    assert_eq!((s, v["order_status"].as_str()), (StatusCode::OK, Some("refund_required")));
    assert_eq!(env.item("c", "a").await["available"], 3);

    // Signatures: bad, stale, body changed after signing, missing, rotated keys.
    let body =
        json!({"event_id": "e9", "order_id": id, "amount_cents": 1400, "status": "succeeded"}).to_string();
    let secret = env.settings.payments.webhook_secret.expose_secret().to_owned();
    let good = testkit::sign(&secret, now_secs(), body.as_bytes());
    let wrong = testkit::sign("not-the-secret", now_secs(), body.as_bytes());
    let stale = testkit::sign(&secret, now_secs() - 301, body.as_bytes());
    for sig in [wrong.as_str(), stale.as_str(), "", "t=1,v1=00"] {
        let (s, v) = env.pay_raw(&body, sig).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_signature"), "{sig}");
    }
    let changed = body.replace("1400", "1");
    let (s, _) = env.pay_raw(&changed, &good).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let rotated = format!("{},{}", good, wrong.split_once(',').unwrap().1);
    let (s, _) = env.pay_raw(&body, &rotated).await;
    assert_eq!(s, StatusCode::OK, "one matching v1 among several suffices");
    // Unknown fields are refused even when signed.
    let extra =
        json!({"event_id": "e10", "order_id": id, "amount_cents": 1400, "status": "succeeded", "x": 1})
            .to_string();
    let sig = testkit::sign(&secret, now_secs(), extra.as_bytes());
    assert_eq!(env.pay_raw(&extra, &sig).await.0, StatusCode::BAD_REQUEST);
    let (s, v) = env.pay("e11", "c.0123456789abcdef0123456789abcdef", 1, "succeeded").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "order_not_found"));
    env.cleanup().await;
}

#[tokio::test]
async fn authentication_refuses_every_bad_token() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 5, "price_cents": 1}]), 1)).await;
    let secret = env.settings.auth.jwt_secret.expose_secret().to_owned();
    let now = now_secs();
    let none_alg = {
        use base64_like::encode;
        format!(
            "{}.{}.",
            encode(br#"{"alg":"none","typ":"JWT"}"#),
            encode(format!(r#"{{"sub":"u","exp":{}}}"#, now + 600).as_bytes())
        )
    };
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "u", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let tokens = [
        none_alg,
        hs512,
        token_with("wrong-key", json!({"sub": "u", "exp": now + 600})),
        token_with(&secret, json!({"sub": "u"})),
        token_with(&secret, json!({"exp": now + 600})),
        token_with(&secret, json!({"sub": "u", "exp": now - 61})),
        token_with(&secret, json!({"sub": "", "exp": now + 600})),
        "not.a.jwt".to_owned(),
    ];
    for t in tokens {
        let res = env
            .http
            .post(env.url(0, "/api/v1/campaigns/c/orders"))
            .bearer_auth(&t)
            .header("Idempotency-Key", "k")
            .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        let (s, v) = decode(res).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthenticated"), "{t}");
    }
    // Within the 60 s leeway an expired token still works.
    let leeway = token_with(&secret, json!({"sub": "u", "exp": now - 30}));
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(&leeway)
        .header("Idempotency-Key", "k")
        .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // Operator API: wrong or missing token.
    let res = env.http.get(env.url(0, "/admin/v1/campaigns/c")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = env.http.get(env.url(0, "/admin/v1/campaigns/c")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    env.cleanup().await;
}

/// Base64url without padding, enough to forge an `alg: none` token.
mod base64_like {
    pub fn encode(input: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn bodies_and_unknown_routes_get_contract_errors() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 5, "price_cents": 1}]), 1)).await;
    let big = format!("{{\"items\": [{{\"sku_id\": \"{}\", \"quantity\": 1}}]}}", "a".repeat(1 << 20));
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(env.token("u"))
        .header("Idempotency-Key", "k")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, v) = decode(res).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(env.token("u"))
        .header("Idempotency-Key", "k")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(env.token("u"))
        .header("Idempotency-Key", "k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, v) = decode(res).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (s, v) = decode(env.http.get(env.url(0, "/nowhere")).send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) =
        decode(env.http.delete(env.url(0, "/api/v1/campaigns/c/orders")).send().await.unwrap()).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let (s, doc) = decode(env.http.get(env.url(0, "/openapi.json")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/api/v1/campaigns/{campaign_id}/orders",
        "/api/v1/orders/{order_id}",
        "/api/v1/orders/{order_id}/cancel",
        "/api/v1/payments/callback",
        "/admin/v1/campaigns",
        "/admin/v1/campaigns/{campaign_id}",
        "/admin/v1/campaigns/{campaign_id}/reconciliation",
        "/admin/v1/campaigns/{campaign_id}/live",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["OrderRequest"].is_object());
    // What the server enforces is stated: the key's pattern, id patterns, ranges,
    // every error status, and the links from a reservation to its order.
    let create = &doc["paths"]["/api/v1/campaigns/{campaign_id}/orders"]["post"];
    let key =
        create["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "Idempotency-Key").unwrap();
    assert_eq!(key["schema"]["pattern"], engine::domain::TOKEN_PATTERN);
    assert_eq!(key["required"], true);
    for code in ["200", "201", "400", "401", "404", "409", "413", "422", "429", "503"] {
        assert!(create["responses"][code].is_object(), "order creation lacks {code}");
    }
    assert_eq!(create["responses"]["201"]["links"]["ReadOrder"]["operationId"], "get");
    assert_eq!(create["security"][0]["storefront"], json!([]));
    let line = &doc["components"]["schemas"]["LineRequest"]["properties"];
    assert_eq!(line["quantity"]["maximum"], engine::domain::MAX_QUANTITY);
    assert_eq!(line["sku_id"]["pattern"], engine::domain::OPERATOR_ID_PATTERN);
    // A u32 threshold is not an int32 (2^31 and above are accepted and answered).
    let text = doc.to_string();
    assert!(!text.contains("\"int32\""), "no field is limited to int32");
    let threshold = &doc["components"]["schemas"]["Thresholds"]["properties"]["max_orders_per_sec"];
    assert_eq!(threshold["maximum"], u32::MAX);
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["responses"]["503"].is_object(), "{method} {path} lacks 503");
            if path.starts_with("/admin/") {
                assert!(op["responses"]["401"].is_object(), "{method} {path} lacks 401");
            }
        }
    }
    let (s, _) = decode(env.http.get(env.url(0, "/healthz")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = decode(env.http.get(env.url(0, "/readyz")).send().await.unwrap()).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")), "{v}");
    let metrics = env.metrics(0).await;
    assert!(metrics.contains("flashsale_http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("flashsale_reservations_total") || metrics.contains("flashsale_cache_answers_total")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn tuning_and_thresholds_take_effect() {
    let env = Env::start().await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 50, "price_cents": 1}]), 1)).await;
    let (s, v) = env
        .admin(
            Method::PATCH,
            "/admin/v1/campaigns/c",
            Some(json!({"per_user_limit": 3, "thresholds": {"max_user_requests_per_sec": 2}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["per_user_limit"], 3);
    assert_eq!(v["thresholds"]["max_user_requests_per_sec"], 2);
    assert_eq!(
        env.order("c", "u", "k1", json!([{"sku_id": "a", "quantity": 1}])).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        env.order("c", "u", "k2", json!([{"sku_id": "a", "quantity": 1}])).await.0,
        StatusCode::CREATED
    );
    let res = env
        .http
        .post(env.url(0, "/api/v1/campaigns/c/orders"))
        .bearer_auth(env.token("u"))
        .header("Idempotency-Key", "k3")
        .json(&json!({"items": [{"sku_id": "a", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());
    let (s, v) = env
        .admin(
            Method::PATCH,
            "/admin/v1/campaigns/c",
            Some(json!({"thresholds": {"max_user_requests_per_sec": null}, "bogus": 1})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    let (s, v) = env
        .admin(
            Method::PATCH,
            "/admin/v1/campaigns/c",
            Some(json!({"thresholds": {"max_user_requests_per_sec": null}})),
        )
        .await;
    assert_eq!((s, &v["thresholds"]["max_user_requests_per_sec"]), (StatusCode::OK, &json!(null)));
    // End the sale now.
    let (s, v) =
        env.admin(Method::PATCH, "/admin/v1/campaigns/c", Some(json!({"ends_at": rfc3339_in(0)}))).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ended")));
    let (s, v) = env.order("c", "w", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "campaign_not_active"));
    let (s, _) = env
        .admin(Method::PATCH, "/admin/v1/campaigns/c", Some(json!({"ends_at": rfc3339_in(-999_999)})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) =
        env.admin(Method::PATCH, "/admin/v1/campaigns/nope", Some(json!({"per_user_limit": 2}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test]
async fn two_gateways_agree_on_stock() {
    let env = Env::start_many(2, |_| {}).await;
    env.launch(campaign("c", json!([{"sku_id": "a", "stock": 1, "price_cents": 1}]), 1)).await;
    let (s, o) = env.order_on(0, "c", "u1", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::CREATED);
    for _ in 0..2 {
        let (s, v) = env.order_on(1, "c", "u2", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "sold_out"));
    }
    // Released through gateway 0, sold again through gateway 1 within a second.
    env.cancel(0, "u1", o["order_id"].as_str().unwrap()).await;
    let started = std::time::Instant::now();
    loop {
        let (s, _) = env.order_on(1, "c", "u2", "k", json!([{"sku_id": "a", "quantity": 1}])).await;
        if s == StatusCode::CREATED {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "not resold within 1 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn campaigns_are_listed_newest_first_a_page_at_a_time() {
    let env = Env::start().await;
    // Five campaigns starting one minute apart; c4 starts last.
    for i in 0..5 {
        let mut c =
            campaign(&format!("c{i}"), json!([{"sku_id": "a", "stock": 10 + i, "price_cents": 1}]), 1);
        c["starts_at"] = json!(rfc3339_in(-600 + 60 * i));
        let (s, v) = env.launch(c).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) = env.order("c2", "alice", "k1", json!([{"sku_id": "a", "quantity": 1}])).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let mut seen = Vec::new();
    let mut path = "/admin/v1/campaigns?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (s, v) = env.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        pages += 1;
        let page = v["campaigns"].as_array().unwrap();
        assert!(page.len() <= 2, "{v}");
        for c in page {
            seen.push(c["campaign_id"].as_str().unwrap().to_owned());
            if c["campaign_id"] == "c2" {
                assert_eq!(c["items"][0]["reserved"], 1, "live counters: {c}");
                assert_eq!(c["items"][0]["available"], 11, "{c}");
            }
        }
        match v["next"].as_str() {
            Some(next) => path = format!("/admin/v1/campaigns?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["c4", "c3", "c2", "c1", "c0"]);
    assert_eq!(pages, 3);

    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["campaigns"].as_array().unwrap().len(), 5, "default page holds them all");
    assert!(v.get("next").is_none(), "{v}");

    for bad in [
        "?limit=0",
        "?limit=201",
        "?limit=x",
        "?cursor=zz",
        "?cursor=12~a.b",
        "?cursor=1234567890123456789~a",
        "?other=1",
    ] {
        let (s, v) = env.admin(Method::GET, &format!("/admin/v1/campaigns{bad}"), None).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
    }
    let res = reqwest::Client::new().get(env.url(0, "/admin/v1/campaigns")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    env.cleanup().await;
}

#[tokio::test]
async fn the_live_view_and_the_dashboard_page() {
    let env = Env::start().await;
    let (s, v) =
        env.launch(campaign("live", json!([{"sku_id": "a", "stock": 5, "price_cents": 100}]), 5)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, before) = env.admin(Method::GET, "/admin/v1/campaigns/live/live", None).await;
    for i in 0..3 {
        let (s, v) = env.order("live", &format!("u{i}"), "k", json!([{"sku_id": "a", "quantity": 2}])).await;
        assert_eq!(s, if i < 2 { StatusCode::CREATED } else { StatusCode::CONFLICT }, "{v}");
    }
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/live/live", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["campaign"]["items"][0]["reserved"], 4, "{v}");
    let count =
        |v: &serde_json::Value, outcome: &str| v["gateway"]["reservations"][outcome].as_u64().unwrap_or(0);
    assert_eq!(count(&v, "reserved") - count(&before, "reserved"), 2, "{v}");
    assert_eq!(count(&v, "sold_out") - count(&before, "sold_out"), 1, "{v}");
    let le = v["gateway"]["reserve_latency_le"].as_array().unwrap();
    let counts = v["gateway"]["reserve_latency_counts"].as_array().unwrap();
    assert_eq!(le.len(), counts.len());
    assert!(counts.last().unwrap().as_u64().unwrap() >= 3, "{v}");
    assert!(v["outbox_backlog"].is_u64() && v["mysql_units_behind"].is_i64(), "{v}");
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/nope/live", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));

    // The page needs no token to load (it asks for one) and may load nothing elsewhere.
    let res = reqwest::Client::new().get(env.url(0, "/admin/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains("/admin/dashboard.js") && !html.contains("http://") && !html.contains("https://"));
    let res = reqwest::Client::new().get(env.url(0, "/admin/dashboard.js")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("/admin/v1/campaigns"));
    env.cleanup().await;
}

/// Redis lost a launched campaign (its node restarted empty) and nothing has rebuilt it
/// yet: its orders answer 503 (a retry resolves it), never 404 `campaign_not_found`;
/// the campaign list answers 200 and shows it from MySQL with `restoring: true`, as its
/// own view does; a campaign never launched is still a 404.
#[tokio::test]
async fn a_campaign_redis_lost_answers_503_and_is_listed_from_mysql() {
    let env = Env::start().await;
    for id in ["lost", "kept"] {
        let (s, v) =
            env.launch(campaign(id, json!([{"sku_id": "a", "stock": 5, "price_cents": 100}]), 2)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let one = json!([{"sku_id": "a", "quantity": 1}]);
    assert_eq!(env.order("lost", "u1", "k1", one.clone()).await.0, StatusCode::CREATED);
    testkit::lose_shard(&env.settings.redis, &env.settings.namespace, "lost").await;

    // Before and after the gateway's cache has noticed.
    for _ in 0..2 {
        let (s, v) = env.order("lost", "u2", "k2", one.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    }
    let (s, v) = env.order("never-launched", "u2", "k2", one.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"), "{v}");
    assert_eq!(env.order("kept", "u2", "k2", one).await.0, StatusCode::CREATED, "the others sell on");

    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let listed =
        |id: &str| v["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == id).cloned();
    let lost = listed("lost").unwrap();
    assert_eq!((lost["restoring"].clone(), lost["items"][0]["stock_total"].clone()), (json!(true), json!(5)));
    assert_eq!(listed("kept").unwrap()["restoring"], json!(false));
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/lost", None).await;
    assert_eq!((s, v["restoring"].clone()), (StatusCode::OK, json!(true)), "{v}");
    env.cleanup().await;
}

/// A payment event id belongs to the first order it was seen with, across the whole
/// system: the same id for an order of another campaign, or of another shard of the
/// same campaign, is 409 `event_id_conflict` and changes nothing.
#[tokio::test]
async fn a_payment_event_id_is_unique_across_campaigns_and_shards() {
    let env = Env::start().await;
    let item = json!([{"sku_id": "a", "stock": 10, "price_cents": 100}]);
    assert_eq!(env.launch(campaign("pa", item.clone(), 5)).await.0, StatusCode::CREATED);
    let mut sharded = campaign("pb", item, 5);
    sharded["shards"] = json!(3);
    assert_eq!(env.launch(sharded).await.0, StatusCode::CREATED);
    let one = json!([{"sku_id": "a", "quantity": 1}]);
    let (_, a) = env.order("pa", "ua", "k", one.clone()).await;
    // Two orders of "pb" in two different shards (users with different home shards).
    let map = engine::shards::ShardMap::new(&engine::domain::CampaignId::parse("pb").unwrap(), 3);
    let users: Vec<String> = (0..)
        .map(|i| format!("ub{i}"))
        .scan(std::collections::HashSet::new(), |homes, u| {
            let home = map.home(&engine::domain::UserId::parse(&u).unwrap());
            Some(homes.insert(home).then_some(u))
        })
        .flatten()
        .take(2)
        .collect();
    let (_, b1) = env.order("pb", &users[0], "k", one.clone()).await;
    let (_, b2) = env.order("pb", &users[1], "k", one).await;
    let id = |v: &serde_json::Value| v["order_id"].as_str().unwrap().to_owned();
    let (s, v) = env.pay("evt-shared", &id(&a), 100, "succeeded").await;
    assert_eq!((s, v["order_status"].clone()), (StatusCode::OK, json!("paid")), "{v}");
    for (o, user) in [(&b1, &users[0]), (&b2, &users[1])] {
        let (s, v) = env.pay("evt-shared", &id(o), 100, "succeeded").await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_id_conflict"), "{v}");
        let (_, order) = env.get_order(user, &id(o)).await;
        assert_eq!(order["status"], "pending_payment", "nothing changed");
    }
    // Within one shard-crossing campaign too: an event of b1 is refused for b2.
    assert_eq!(env.pay("evt-b1", &id(&b1), 100, "succeeded").await.0, StatusCode::OK);
    let (s, v) = env.pay("evt-b1", &id(&b2), 100, "succeeded").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "event_id_conflict"), "{v}");
    // The first order's own event again is a no-op.
    let (s, v) = env.pay("evt-shared", &id(&a), 100, "succeeded").await;
    assert_eq!((s, v["result"].clone()), (StatusCode::OK, json!("duplicate")), "{v}");
    env.cleanup().await;
}

/// Dead letters through the operator API: listed newest first a page at a time, sent
/// back by id or all at once; bad pages and ids are 400 and change nothing.
#[tokio::test]
async fn dead_letters_are_listed_and_sent_back() {
    let env = Env::start().await;
    let (s, v) = env.admin(Method::GET, "/admin/v1/dead-letters", None).await;
    assert_eq!((s, v["orders"].clone()), (StatusCode::OK, json!([])), "{v}");
    let db = ledger::Db::connect(&env.settings.mysql).await.unwrap();
    let letters: Vec<ledger::dead::NewDeadLetter> = (0..3)
        .map(|i| ledger::dead::NewDeadLetter {
            letter: ledger::dead::DeadLetter {
                order_id: format!("c.order{i}"),
                campaign_id: "c".into(),
                reason: "unknown_sku".into(),
                at_ms: 1_000 + i,
            },
            event_json: "{}".into(),
        })
        .collect();
    db.record_dead_letters(&letters).await.unwrap();
    let (s, v) = env.admin(Method::GET, "/admin/v1/dead-letters?limit=2", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> =
        v["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c.order2", "c.order1"], "newest first");
    assert_eq!(v["orders"][0]["reason"], "unknown_sku");
    let next = v["next"].as_str().unwrap().to_owned();
    let (_, v) = env.admin(Method::GET, &format!("/admin/v1/dead-letters?limit=2&cursor={next}"), None).await;
    assert_eq!(v["orders"][0]["order_id"], "c.order0");
    assert!(v.get("next").is_none());
    for bad in ["limit=0", "limit=201", "cursor=nope", "cursor=1~a%20b", "other=1"] {
        let (s, v) = env.admin(Method::GET, &format!("/admin/v1/dead-letters?{bad}"), None).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
    }
    let (s, v) = env
        .admin(Method::POST, "/admin/v1/dead-letters/replay", Some(json!({"order_ids": ["a b", ""]})))
        .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"replayed": 0})),
        "ids that name no dead letter send nothing back"
    );
    for bad in [json!({"order_ids": "c.order0"}), json!({"order_ids": [1]}), json!({"extra": 1})] {
        let (s, v) = env.admin(Method::POST, "/admin/v1/dead-letters/replay", Some(bad.clone())).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
    }
    let (s, v) = env
        .admin(
            Method::POST,
            "/admin/v1/dead-letters/replay",
            Some(json!({"order_ids": ["c.order1", "c.none"]})),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"replayed": 1})));
    let (s, v) = env.admin(Method::POST, "/admin/v1/dead-letters/replay", Some(json!({}))).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"replayed": 3})));
    db.close().await;
    env.cleanup().await;
}

/// Named operators: each token acts as its operator, every launch and tuning is
/// recorded with who made it and the campaign before and after, newest first; a refused
/// change is not recorded; a token that is no operator's is 401.
#[tokio::test]
async fn operators_are_named_and_every_change_is_in_the_history() {
    let env = Env::start_many(1, |s| {
        s.admin.tokens = "alice:alice-token-0123456,bob:bob-token-01234567".into();
    })
    .await;
    let as_op = |token: &'static str, method: Method, path: String, body: Option<serde_json::Value>| {
        let mut req = env.http.request(method, env.url(0, &path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move { decode(req.send().await.unwrap()).await }
    };
    let c = campaign("audited", json!([{"sku_id": "a", "stock": 5, "price_cents": 100}]), 2);
    let (s, v) = as_op("alice-token-0123456", Method::POST, "/admin/v1/campaigns".into(), Some(c)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let tune =
        |body| as_op("bob-token-01234567", Method::PATCH, "/admin/v1/campaigns/audited".into(), Some(body));
    assert_eq!(tune(json!({"per_user_limit": 3})).await.0, StatusCode::OK);
    assert_eq!(tune(json!({"per_user_limit": 0})).await.0, StatusCode::BAD_REQUEST, "refused");
    let (s, _) = env
        .admin(
            Method::PATCH,
            "/admin/v1/campaigns/audited",
            Some(json!({"thresholds": {"max_orders_per_sec": 9}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "admin.token is the operator admin");
    let (s, _) = as_op("not-a-token-at-all-0123", Method::GET, "/admin/v1/campaigns".into(), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let (s, h) = env.admin(Method::GET, "/admin/v1/campaigns/audited/history", None).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let changes = h["changes"].as_array().unwrap();
    let who: Vec<(&str, &str)> =
        changes.iter().map(|c| (c["operator"].as_str().unwrap(), c["action"].as_str().unwrap())).collect();
    assert_eq!(
        who,
        [("admin", "tune"), ("bob", "tune"), ("alice", "launch")],
        "newest first; the refusal not recorded"
    );
    assert_eq!(
        (changes[1]["before"]["per_user_limit"].clone(), changes[1]["after"]["per_user_limit"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(changes[2]["before"], json!(null));
    assert_eq!(changes[2]["after"]["items"][0]["stock"], json!(5));
    assert!(!h.to_string().contains("token-0123456"), "no token in a record");
    let (s, v) = env.admin(Method::GET, "/admin/v1/campaigns/nope/history", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "campaign_not_found"));
    env.cleanup().await;
}
