//! Operator API: launch, view, tune and reconcile campaigns.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use engine::campaign::{
    CampaignLaunch, CampaignMeta, CampaignTuning, LaunchItem, LaunchOutcome, SkuCounters, TuneOutcome,
};
use engine::clock::now_ms;
use engine::domain::{CampaignId, SkuId};
use ledger::reconcile::Reconciliation;
use ledger::{CampaignRow, InsertCampaign};
use serde::{Deserialize, Serialize};

use crate::auth::Operator;
use crate::body::{double_option, object, JsonBody};
use crate::error::{AppError, ErrorBody};
use crate::metrics::LiveCounters;
use crate::state::AppState;
use crate::view::{parse_time, rfc3339, CampaignItemView, CampaignList, CampaignView, Thresholds};

/// Most skus in one campaign (each is a key of the warm-up script).
pub const MAX_SKUS: usize = 1000;
/// Largest stock of one sku.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Largest price of one unit, in cents; with [`MAX_PER_USER_LIMIT`] it keeps every
/// order total exact in the scripts' number format.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000;
/// Largest per-user limit.
pub const MAX_PER_USER_LIMIT: i64 = 10_000;
/// Campaigns per page of `GET /admin/v1/campaigns`: default and most.
pub const LIST_DEFAULT: u32 = 50;
pub const LIST_MAX: u32 = 200;
/// Longest campaign name.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    campaign_id: String,
    name: String,
    starts_at: String,
    ends_at: String,
    per_user_limit: i64,
    payment_window_secs: i64,
    items: Vec<LaunchItemRequest>,
    #[serde(default, deserialize_with = "object")]
    thresholds: Option<ThresholdsRequest>,
    /// Redis shards of every sku's stock, 1..=64 (default 1).
    #[serde(default)]
    shards: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchItemRequest {
    sku_id: String,
    stock: i64,
    price_cents: i64,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsRequest {
    #[serde(default, deserialize_with = "double_option")]
    max_orders_per_sec: Option<Option<u32>>,
    #[serde(default, deserialize_with = "double_option")]
    max_user_requests_per_sec: Option<Option<u32>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TuneRequest {
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    per_user_limit: Option<i64>,
    #[serde(default, deserialize_with = "object")]
    thresholds: Option<ThresholdsRequest>,
}

fn invalid(msg: impl Into<String>) -> AppError {
    AppError::InvalidRequest(msg.into())
}

fn check_limit(v: i64) -> Result<u64, AppError> {
    if !(1..=MAX_PER_USER_LIMIT).contains(&v) {
        return Err(invalid(format!("per_user_limit must be 1..={MAX_PER_USER_LIMIT}")));
    }
    Ok(v as u64)
}

fn check_threshold(name: &str, v: Option<Option<u32>>) -> Result<Option<Option<u32>>, AppError> {
    if v == Some(Some(0)) {
        return Err(invalid(format!("thresholds.{name} must be at least 1 or null")));
    }
    Ok(v)
}

fn validate_launch(r: LaunchRequest) -> Result<(CampaignLaunch, CampaignRow), AppError> {
    let campaign = CampaignId::parse(&r.campaign_id)?;
    if campaign.as_str() == engine::store::PROBE_CAMPAIGN {
        return Err(invalid(format!("campaign_id {campaign} is reserved")));
    }
    let name_chars = r.name.chars().count();
    if name_chars == 0 || name_chars > MAX_NAME_CHARS || r.name.chars().any(char::is_control) {
        return Err(invalid(format!("name must be 1..={MAX_NAME_CHARS} characters")));
    }
    let starts_ms = parse_time("starts_at", &r.starts_at)?;
    let ends_ms = parse_time("ends_at", &r.ends_at)?;
    if ends_ms <= starts_ms {
        return Err(invalid("ends_at must be after starts_at"));
    }
    let per_user_limit = check_limit(r.per_user_limit)?;
    if !(1..=86_400).contains(&r.payment_window_secs) {
        return Err(invalid("payment_window_secs must be 1..=86400"));
    }
    if r.items.is_empty() || r.items.len() > MAX_SKUS {
        return Err(invalid(format!("items must have 1..={MAX_SKUS} entries")));
    }
    let mut items: Vec<LaunchItem> = Vec::with_capacity(r.items.len());
    for i in &r.items {
        let sku = SkuId::parse(&i.sku_id)?;
        if items.iter().any(|x| x.sku == sku) {
            return Err(invalid(format!("sku {sku} appears twice")));
        }
        if !(0..=MAX_STOCK).contains(&i.stock) {
            return Err(invalid(format!("stock of {sku} must be 0..={MAX_STOCK}")));
        }
        if !(0..=MAX_PRICE_CENTS).contains(&i.price_cents) {
            return Err(invalid(format!("price_cents of {sku} must be 0..={MAX_PRICE_CENTS}")));
        }
        items.push(LaunchItem { sku, stock: i.stock as u64, price_cents: i.price_cents });
    }
    let shards = r.shards.unwrap_or(1);
    if !(1..=engine::shards::MAX_SHARDS as i64).contains(&shards) {
        return Err(invalid(format!("shards must be 1..={}", engine::shards::MAX_SHARDS)));
    }
    let t = r.thresholds.unwrap_or_default();
    let max_orders = check_threshold("max_orders_per_sec", t.max_orders_per_sec)?.flatten();
    let max_user = check_threshold("max_user_requests_per_sec", t.max_user_requests_per_sec)?.flatten();
    let launch = CampaignLaunch {
        campaign,
        starts_ms,
        ends_ms,
        per_user_limit,
        payment_window_secs: r.payment_window_secs as u32,
        max_orders_per_sec: max_orders,
        max_user_requests_per_sec: max_user,
        items,
        shards: shards as u16,
    };
    let row = CampaignRow::from_launch(&launch, &r.name);
    Ok((launch, row))
}

/// `POST /admin/v1/campaigns`: persisted in MySQL first, then warmed in Redis. A
/// launch repeated with the same definition after a failure half-way completes it;
/// any other repeat is `campaign_exists`.
#[utoipa::path(post, path = "/admin/v1/campaigns", tag = "operator", request_body = LaunchRequest,
    responses((status = 201, body = CampaignView), (status = 400, body = ErrorBody, description = "invalid_request"), (status = 409, body = ErrorBody, description = "campaign_exists")))]
pub async fn launch(
    State(state): State<AppState>,
    Operator(operator): Operator,
    JsonBody(body): JsonBody<LaunchRequest>,
) -> Result<(StatusCode, Json<CampaignView>), AppError> {
    let (launch, row) = validate_launch(body)?;
    let id = launch.campaign.to_string();
    let wrote_row = match state.db.insert_campaign_as(&row, now_ms(), &operator).await? {
        InsertCampaign::Created => true,
        InsertCampaign::Exists(existing) if existing == row => false,
        InsertCampaign::Exists(_) => return Err(AppError::CampaignExists(id)),
    };
    match state.engine.launch(&launch).await? {
        LaunchOutcome::Created => {}
        // This request wrote the MySQL row, yet Redis holds the campaign: a worker's
        // rebuild check ran between the two steps and restored it from that row (this
        // request's definition). The launch happened; answer it as launched.
        LaunchOutcome::AlreadyExists if wrote_row => {}
        LaunchOutcome::AlreadyExists => return Err(AppError::CampaignExists(id)),
    }
    let (campaign, meta) = load(&state, launch.campaign.as_str()).await?;
    Ok((StatusCode::CREATED, Json(campaign_view(&state, &campaign, &meta).await?)))
}

async fn load(state: &AppState, id: &str) -> Result<(CampaignId, CampaignMeta), AppError> {
    let campaign = CampaignId::parse(id).map_err(|_| AppError::CampaignNotFound(id.to_owned()))?;
    match state.engine.campaign_meta(&campaign).await? {
        Some(meta) => Ok((campaign, meta)),
        // Launched (MySQL has it) but Redis lost it: being rebuilt, never a 404.
        None if state.db.campaign_exists(id).await? => {
            Err(AppError::Unavailable(format!("campaign {id} is being rebuilt")))
        }
        None => Err(AppError::CampaignNotFound(id.to_owned())),
    }
}

/// The campaign view with Redis's live counters or, while Redis cannot answer for the
/// campaign (a shard being rebuilt after a data loss, Redis out of reach), MySQL's
/// view of it marked `restoring`: only a MySQL that is down makes this fail.
async fn view_or_mysql(
    state: &AppState,
    campaign: &CampaignId,
    name: String,
) -> Result<CampaignView, AppError> {
    let from_redis = async {
        let Some(meta) = state.engine.campaign_meta(campaign).await? else {
            return Err(engine::EngineError::Unavailable("no meta in Redis".into()));
        };
        let counters = state.engine.counters(campaign, &meta.skus).await?;
        Ok(view_of(campaign, &meta, name.clone(), counters))
    };
    match from_redis.await {
        Ok(view) => Ok(view),
        Err(e) => {
            tracing::debug!(%campaign, error = %e, "campaign view from MySQL: Redis cannot answer for it");
            mysql_view(state, campaign, name).await
        }
    }
}

async fn mysql_view(state: &AppState, campaign: &CampaignId, name: String) -> Result<CampaignView, AppError> {
    let row = state
        .db
        .campaign(campaign.as_str())
        .await?
        .ok_or_else(|| AppError::CampaignNotFound(campaign.to_string()))?;
    let counters = state
        .db
        .buckets(campaign.as_str())
        .await?
        .into_iter()
        .filter_map(|(sku, total, available, reserved, sold)| {
            let price_cents = row.items.iter().find(|i| i.sku_id == sku)?.price_cents;
            Some(SkuCounters {
                sku: SkuId::parse(&sku).ok()?,
                total: total.max(0) as u64,
                available: available.max(0) as u64,
                reserved: reserved.max(0) as u64,
                sold: sold.max(0) as u64,
                price_cents,
            })
        })
        .collect();
    let meta = CampaignMeta {
        campaign: campaign.clone(),
        starts_ms: row.starts_ms,
        ends_ms: row.ends_ms,
        per_user_limit: row.per_user_limit.max(0) as u64,
        payment_window_secs: row.payment_window_secs,
        max_orders_per_sec: row.max_orders_per_sec,
        max_user_requests_per_sec: row.max_user_requests_per_sec,
        skus: Vec::new(),
        version: 0,
        shards: row.shards,
    };
    let mut view = view_of(campaign, &meta, name, counters);
    view.restoring = true;
    Ok(view)
}

async fn campaign_view(
    state: &AppState,
    campaign: &CampaignId,
    meta: &CampaignMeta,
) -> Result<CampaignView, AppError> {
    let name = state.db.campaign(campaign.as_str()).await?.map(|c| c.name).unwrap_or_default();
    view_named(state, campaign, meta, name).await
}

async fn view_named(
    state: &AppState,
    campaign: &CampaignId,
    meta: &CampaignMeta,
    name: String,
) -> Result<CampaignView, AppError> {
    let counters = state.engine.counters(campaign, &meta.skus).await?;
    Ok(view_of(campaign, meta, name, counters))
}

/// The campaign view from counters already read.
fn view_of(
    campaign: &CampaignId,
    meta: &CampaignMeta,
    name: String,
    counters: Vec<SkuCounters>,
) -> CampaignView {
    let status = meta.phase_at(now_ms()).as_str();
    CampaignView {
        campaign_id: campaign.to_string(),
        name,
        status,
        starts_at: rfc3339(meta.starts_ms),
        ends_at: rfc3339(meta.ends_ms),
        per_user_limit: meta.per_user_limit,
        payment_window_secs: meta.payment_window_secs,
        thresholds: Thresholds {
            max_orders_per_sec: meta.max_orders_per_sec,
            max_user_requests_per_sec: meta.max_user_requests_per_sec,
        },
        items: counters
            .into_iter()
            .map(|c| CampaignItemView {
                sku_id: c.sku.to_string(),
                price_cents: c.price_cents,
                stock_total: c.total,
                available: c.available,
                reserved: c.reserved,
                sold: c.sold,
            })
            .collect(),
        restoring: false,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Campaigns per page.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next` of the previous page: campaigns after that position (opaque to
    /// clients; any string of this pattern is a position).
    #[param(pattern = "^-?[0-9]{1,18}~[A-Za-z0-9_-]{1,64}$")]
    cursor: Option<String>,
}

/// A page cursor: the last campaign's `<starts_ms>~<campaign_id>`.
fn encode_cursor(starts_ms: i64, id: &str) -> String {
    format!("{starts_ms}~{id}")
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), AppError> {
    let bad = || invalid("cursor is not one this API gives out");
    let (at, id) = cursor.split_once('~').ok_or_else(bad)?;
    if at.trim_start_matches('-').len() > 18 {
        return Err(bad());
    }
    let at = at.parse::<i64>().map_err(|_| bad())?;
    CampaignId::parse(id).map_err(|_| bad())?;
    Ok((at, id.to_owned()))
}

/// `GET /admin/v1/campaigns`: newest `starts_at` first, a page at a time, each with
/// live counters from Redis.
#[utoipa::path(get, path = "/admin/v1/campaigns", tag = "operator", params(ListQuery),
    responses((status = 200, body = CampaignList), (status = 400, body = ErrorBody, description = "invalid_request")))]
pub async fn list(
    State(state): State<AppState>,
    _: Operator,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CampaignList>, AppError> {
    let Query(q) = query.map_err(|e| invalid(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    if !(1..=LIST_MAX).contains(&limit) {
        return Err(invalid(format!("limit must be 1..={LIST_MAX}")));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let (page, more) =
        state.db.campaign_page(after.as_ref().map(|(at, id)| (*at, id.as_str())), limit).await?;
    let mut campaigns = Vec::with_capacity(page.len());
    for (id, name, _) in &page {
        let Ok(campaign) = CampaignId::parse(id) else {
            tracing::error!(campaign = %id, "a campaign row with an id the API never accepts; not listed");
            continue;
        };
        // A campaign Redis cannot answer for (being rebuilt, a launch half-way) is
        // listed from MySQL with `restoring`: one campaign never fails the page.
        campaigns.push(view_or_mysql(&state, &campaign, name.clone()).await?);
    }
    let next = if more { page.last().map(|(id, _, at)| encode_cursor(*at, id)) } else { None };
    Ok(Json(CampaignList { campaigns, next }))
}

/// `GET /admin/v1/campaigns/{id}`: the campaign with live counters from Redis.
#[utoipa::path(get, path = "/admin/v1/campaigns/{campaign_id}", tag = "operator", params(("campaign_id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody, description = "campaign_not_found")))]
pub async fn view(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, AppError> {
    let campaign = CampaignId::parse(&id).map_err(|_| AppError::CampaignNotFound(id.clone()))?;
    let row = state.db.campaign(&id).await?.ok_or_else(|| AppError::CampaignNotFound(id.clone()))?;
    view_or_mysql(&state, &campaign, row.name).await.map(Json)
}

/// `PATCH /admin/v1/campaigns/{id}`: takes effect on every gateway within 1 s.
#[utoipa::path(patch, path = "/admin/v1/campaigns/{campaign_id}", tag = "operator", params(("campaign_id" = String, Path)),
    request_body = TuneRequest,
    responses((status = 200, body = CampaignView), (status = 400, body = ErrorBody, description = "invalid_request"), (status = 404, body = ErrorBody, description = "campaign_not_found")))]
pub async fn tune(
    State(state): State<AppState>,
    Operator(operator): Operator,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TuneRequest>,
) -> Result<Json<CampaignView>, AppError> {
    let (campaign, _) = load(&state, &id).await?;
    let t = body.thresholds.unwrap_or_default();
    let tuning = CampaignTuning {
        ends_ms: body.ends_at.as_deref().map(|s| parse_time("ends_at", s)).transpose()?,
        per_user_limit: body.per_user_limit.map(check_limit).transpose()?,
        max_orders_per_sec: check_threshold("max_orders_per_sec", t.max_orders_per_sec)?,
        max_user_requests_per_sec: check_threshold("max_user_requests_per_sec", t.max_user_requests_per_sec)?,
    };
    match state.engine.tune(&campaign, &tuning).await? {
        TuneOutcome::Tuned => {}
        TuneOutcome::NotFound => return Err(AppError::CampaignNotFound(id)),
        TuneOutcome::EndsBeforeStart => return Err(invalid("ends_at must be after starts_at")),
    }
    state
        .db
        .tune_campaign(
            campaign.as_str(),
            (tuning.ends_ms, tuning.per_user_limit.map(|v| v as i64)),
            (tuning.max_orders_per_sec, tuning.max_user_requests_per_sec),
            (&operator, now_ms()),
        )
        .await?;
    let (campaign, meta) = load(&state, campaign.as_str()).await?;
    campaign_view(&state, &campaign, &meta).await.map(Json)
}

/// `GET /admin/v1/campaigns/{id}/live`: what the operator dashboard polls.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LiveView {
    pub campaign: CampaignView,
    /// When this was read (RFC 3339, milliseconds).
    pub at: String,
    /// Outbox entries not yet relayed to RabbitMQ.
    pub outbox_backlog: u64,
    /// Redis against MySQL, as `GET .../reconciliation` reports it.
    pub mysql_consistent: bool,
    /// Units Redis granted that MySQL has not applied yet (Σ drift over the skus).
    pub mysql_units_behind: i64,
    /// This gateway's answers since it started (every campaign together).
    pub gateway: LiveCounters,
}

#[utoipa::path(get, path = "/admin/v1/campaigns/{campaign_id}/live", tag = "operator",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = LiveView), (status = 404, body = ErrorBody, description = "campaign_not_found")))]
pub async fn live(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<LiveView>, AppError> {
    let (campaign, meta) = load(&state, &id).await?;
    let at = now_ms();
    // One read of the counters serves the view and the comparison with MySQL.
    let counters = state.engine.counters(&campaign, &meta.skus).await?;
    let recon = ledger::reconcile::against(&state.db, &campaign, &counters).await?;
    let name = state.db.campaign(campaign.as_str()).await?.map(|c| c.name).unwrap_or_default();
    // Every shard's outbox (one stream when unsharded).
    let streams = state.engine.outbox_streams(std::slice::from_ref(&campaign)).await?;
    let backlog = state.engine.outbox_lengths(&streams).await?;
    Ok(Json(LiveView {
        campaign: view_of(&campaign, &meta, name, counters),
        at: rfc3339(at),
        outbox_backlog: backlog.iter().sum(),
        mysql_consistent: recon.consistent,
        mysql_units_behind: recon.items.iter().map(|i| i.drift).sum(),
        gateway: state.metrics.live(),
    }))
}

/// One recorded change of a campaign.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeView {
    /// When it was made.
    at: String,
    /// The operator whose token made it (never the token).
    operator: String,
    /// `launch` or `tune` (ending a sale is a tuning of `ends_at`).
    action: String,
    /// The campaign before (`null` for a launch).
    #[schema(value_type = Option<Object>)]
    before: serde_json::Value,
    /// The campaign after.
    #[schema(value_type = Object)]
    after: serde_json::Value,
}

/// `GET /admin/v1/campaigns/{id}/history`: newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    changes: Vec<ChangeView>,
}

/// Changes listed by the history route at most (the newest).
pub const HISTORY_MAX: u32 = 200;

#[utoipa::path(get, path = "/admin/v1/campaigns/{campaign_id}/history", tag = "operator",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = History), (status = 404, body = ErrorBody, description = "campaign_not_found")))]
pub async fn history(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<History>, AppError> {
    CampaignId::parse(&id).map_err(|_| AppError::CampaignNotFound(id.clone()))?;
    if !state.db.campaign_exists(&id).await? {
        return Err(AppError::CampaignNotFound(id));
    }
    let parse = |j: &str| serde_json::from_str(j).unwrap_or(serde_json::Value::Null);
    let changes = state
        .db
        .campaign_history(&id, HISTORY_MAX)
        .await?
        .into_iter()
        .map(|c| ChangeView {
            at: rfc3339(c.at_ms),
            operator: c.operator,
            action: c.action,
            before: c.before.as_deref().map_or(serde_json::Value::Null, parse),
            after: parse(&c.after),
        })
        .collect();
    Ok(Json(History { changes }))
}

/// `GET /admin/v1/campaigns/{id}/reconciliation`
#[utoipa::path(get, path = "/admin/v1/campaigns/{campaign_id}/reconciliation", tag = "operator",
    params(("campaign_id" = String, Path)),
    responses((status = 200, body = Reconciliation), (status = 404, body = ErrorBody, description = "campaign_not_found")))]
pub async fn reconciliation(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<Json<Reconciliation>, AppError> {
    let campaign = CampaignId::parse(&id).map_err(|_| AppError::CampaignNotFound(id.clone()))?;
    ledger::reconcile::check(&state.engine, &state.db, &campaign)
        .await?
        .map(Json)
        .ok_or(AppError::CampaignNotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_given_as_a_list_are_refused() {
        for bad in [&br#"{"thresholds": []}"#[..], br#"{"thresholds": [null]}"#, br#"{"thresholds": 3}"#] {
            assert!(
                matches!(crate::body::parse::<TuneRequest>(bad), Err(AppError::InvalidRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &br#"{"thresholds": {}}"#[..],
            br#"{"thresholds": null}"#,
            br#"{"thresholds": {"max_orders_per_sec": 2.0}}"#,
        ] {
            assert!(crate::body::parse::<TuneRequest>(good).is_ok(), "{}", String::from_utf8_lossy(good));
        }
    }
}
