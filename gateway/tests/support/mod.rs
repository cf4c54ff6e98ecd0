//! Test support: a gateway on port 0 with its own Redis namespace and MySQL database.
#![allow(dead_code, clippy::unwrap_used)]

use common::config::{ExposeSecret, Settings};
use gateway::server::Running;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};

pub struct Env {
    pub settings: Settings,
    pub gateways: Vec<Running>,
    pub http: Client,
}

pub fn test_settings() -> Settings {
    let mut s = testkit::isolate("gw");
    s.mysql.max_connections = 4;
    s.gateway.listen = "127.0.0.1:0".parse().unwrap();
    s.gateway.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s.auth.jwt_secret = "test-jwt-secret".into();
    s.admin.token = "test-admin-token".into();
    s.payments.webhook_secret = "test-webhook-secret".into();
    s
}

impl Env {
    pub async fn start() -> Self {
        Self::start_many(1, |_| {}).await
    }

    pub async fn start_many(n: usize, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings();
        tweak(&mut settings);
        let mut gateways = Vec::new();
        for _ in 0..n {
            gateways.push(gateway::server::start(settings.clone()).await.unwrap());
        }
        let http = Client::builder().pool_max_idle_per_host(64).build().unwrap();
        Self { settings, gateways, http }
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.gateways[i].addr, path)
    }

    pub fn token(&self, user: &str) -> String {
        token_with(
            self.settings.auth.jwt_secret.expose_secret(),
            json!({"sub": user, "exp": now_secs() + 600}),
        )
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(0, path))
            .bearer_auth(self.settings.admin.token.expose_secret());
        if let Some(b) = body {
            req = req.json(&b);
        }
        decode(req.send().await.unwrap()).await
    }

    pub async fn launch(&self, body: Value) -> (StatusCode, Value) {
        self.admin(Method::POST, "/admin/v1/campaigns", Some(body)).await
    }

    pub async fn order_on(
        &self,
        gw: usize,
        campaign: &str,
        user: &str,
        key: &str,
        items: Value,
    ) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(gw, &format!("/api/v1/campaigns/{campaign}/orders")))
            .bearer_auth(self.token(user))
            .header("Idempotency-Key", key)
            .json(&json!({"items": items}))
            .send()
            .await
            .unwrap();
        decode(res).await
    }

    /// Gateway `gw`'s Prometheus text.
    pub async fn metrics(&self, gw: usize) -> String {
        let url = format!("http://{}/metrics", self.gateways[gw].metrics_addr);
        self.http.get(url).send().await.unwrap().text().await.unwrap()
    }

    pub async fn order(&self, campaign: &str, user: &str, key: &str, items: Value) -> (StatusCode, Value) {
        self.order_on(0, campaign, user, key, items).await
    }

    pub async fn get_order(&self, user: &str, id: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(self.url(0, &format!("/api/v1/orders/{id}")))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        decode(res).await
    }

    pub async fn cancel(&self, gw: usize, user: &str, id: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(gw, &format!("/api/v1/orders/{id}/cancel")))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap();
        decode(res).await
    }

    pub async fn pay_raw(&self, body: &str, signature: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(0, "/api/v1/payments/callback"))
            .header("Flashsale-Signature", signature)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        decode(res).await
    }

    pub async fn pay(&self, event: &str, order: &str, amount: i64, status: &str) -> (StatusCode, Value) {
        let body = json!({"event_id": event, "order_id": order, "amount_cents": amount, "status": status})
            .to_string();
        let sig =
            testkit::sign(self.settings.payments.webhook_secret.expose_secret(), now_secs(), body.as_bytes());
        self.pay_raw(&body, &sig).await
    }

    pub async fn item(&self, campaign: &str, sku: &str) -> Value {
        let (_, v) = self.admin(Method::GET, &format!("/admin/v1/campaigns/{campaign}"), None).await;
        v["items"].as_array().unwrap().iter().find(|i| i["sku_id"] == sku).cloned().unwrap()
    }

    /// Stops the gateways and removes the namespace and the database.
    pub async fn cleanup(self) {
        for g in self.gateways {
            g.state.db.close().await;
            g.shutdown().await;
        }
        cleanup_settings(&self.settings).await;
    }
}

pub async fn cleanup_settings(settings: &Settings) {
    testkit::cleanup(settings).await;
}

pub fn now_secs() -> i64 {
    engine::clock::now_ms() / 1000
}

pub fn token_with(secret: &str, claims: Value) -> String {
    testkit::token(secret, &claims)
}

pub async fn decode(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub fn rfc3339_in(secs: i64) -> String {
    gateway::view::rfc3339((now_secs() + secs) * 1000)
}

/// A campaign open now for an hour.
pub fn campaign(id: &str, items: Value, limit: i64) -> Value {
    json!({
        "campaign_id": id, "name": "Test sale",
        "starts_at": rfc3339_in(-60), "ends_at": rfc3339_in(3600),
        "per_user_limit": limit, "payment_window_secs": 900,
        "items": items
    })
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}
