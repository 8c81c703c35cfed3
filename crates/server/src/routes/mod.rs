//! The REST API's routes, one module per service, each declaring its
//! endpoints with [`crate::rest::endpoint!`]. [`api`] gathers them into one
//! router with its OpenAPI document.

pub(crate) mod accounts;
pub(crate) mod audit;
pub(crate) mod disks;

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::http_api::AppState;
use crate::rest::Replayable;

/// The answer of a deletion.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct Deleted {
    /// What was deleted (its id or name).
    pub deleted: String,
}

impl Replayable for Deleted {}

/// Every route declared with the REST framework, with its document.
pub(crate) fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .merge(accounts::routes())
        .merge(audit::routes())
        .merge(disks::routes())
}
