//! The operator dashboard at `GET /admin/`: one HTML page and one script, embedded in
//! the binary. The page asks for the admin token once (kept in the tab's session
//! storage, never in the URL) and calls the operator API with it; it loads nothing
//! from any other host (the Content-Security-Policy forbids it).

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");
const POLICY: &str =
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /admin/`
pub async fn page() -> impl IntoResponse {
    embedded("text/html; charset=utf-8", PAGE)
}

/// `GET /admin/dashboard.js`
pub async fn script() -> impl IntoResponse {
    embedded("text/javascript; charset=utf-8", SCRIPT)
}

fn embedded(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}
