//! The one router: the AWS KMS endpoint, health, the OpenAPI document and
//! every REST route, with the refusal of what none of them takes.

use std::sync::Arc;

use atrest_kms::RequestMeta;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, get};
use http::request::Parts;

use crate::error::ApiError;
use crate::request::{Peer, rest_error_response};
use crate::state::AppState;

/// The router of the HTTP listener, with the web console under
/// `/console/` unless `console` is `None` (`--no-console`).
pub(crate) fn router(state: Arc<AppState>, console: Option<atrest_console::Options>) -> Router {
    let api = api_router(Arc::clone(&state));
    match console {
        None => api,
        Some(options) => {
            // The console's calls go through the API's router (its own
            // clone, without the console: no reference cycle keeps the
            // state, and its store files, alive after shutdown).
            let backend = crate::console::Backend::new(state, api.clone());
            api.merge(atrest_console::router::<_, ()>(
                atrest_console::Console::new(backend, options),
            ))
        }
    }
}

/// The API's routes: the AWS KMS endpoint, health, the OpenAPI document,
/// every REST route and the internal node-to-node endpoints.
fn api_router(state: Arc<AppState>) -> Router {
    let (rest_routes, rest_doc) = crate::routes::api().split_for_parts();
    crate::openapi::add_paths(rest_doc);
    Router::new()
        .route("/", any(crate::kms_api::kms_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .merge(rest_routes)
        .route("/internal/v1/{*rest}", any(crate::internal::handle))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

async fn no_route(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let err = ApiError::NoRoute(req.uri().path().to_owned());
    unrouted(&st, req, err).await
}

async fn wrong_method(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let err = ApiError::WrongMethod(req.method().to_string(), req.uri().path().to_owned());
    unrouted(&st, req, err).await
}

/// Answers a request no handler takes, after counting it in the audit
/// trail's refusals of its address (probing unknown paths is worth seeing
/// there, one record per address and interval).
async fn unrouted(st: &AppState, req: Request, err: ApiError) -> Response {
    let (parts, body) = req.into_parts();
    drop(body);
    refuse_parts(st, &parts, err).await
}

/// Refuses a request before its handler runs (no route, wrong method):
/// counts it in the audit trail's refusals and answers the REST error
/// shape.
async fn refuse_parts(st: &AppState, parts: &Parts, err: ApiError) -> Response {
    let mut meta = RequestMeta::in_process();
    meta.source = parts
        .extensions
        .get::<Peer>()
        .map_or_else(|| "unknown".into(), |p| p.0.to_string());
    let path = parts.uri.path();
    // Before authentication: counted per address, not recorded one by one.
    st.trail.note_refusal(
        parts.extensions.get::<Peer>().map(|p| p.0.ip()),
        err.parts().1,
    );
    tracing::debug!(request_id = %meta.request_id, source = %meta.source, path = %path, status = err.rest_parts().0.as_u16(), "request refused before its handler");
    rest_error_response(&err, &meta.request_id)
}
