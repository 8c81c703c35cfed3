//! The OpenAPI 3 document of the REST API (`GET /v1/openapi.json`),
//! generated from the handlers' `#[utoipa::path]` annotations and the
//! request and response types' `ToSchema` derives. The KMS JSON endpoint
//! (`POST /`) is the AWS KMS protocol, documented by AWS, and is not in it.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Documents what every create and list shares ([`crate::rest`]): the
/// `Idempotency-Key` header on each `POST`, and `limit` and `next_token` on
/// each `List*` operation.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let param =
            |name: &str, place: ParameterIn, schema: ObjectBuilder, what: &str| -> Parameter {
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(place)
                    .required(Required::False)
                    .description(Some(what))
                    .schema(Some(schema))
                    .build()
            };
        for (path, item) in &mut doc.paths.paths {
            if path == "/v1/openapi.json" {
                continue;
            }
            // Endpoints of the REST framework document their own.
            if [&item.get, &item.post, &item.put, &item.delete]
                .iter()
                .filter_map(|o| o.as_ref())
                .any(|o| o.operation_id.as_deref().is_some_and(|id| id.contains(':')))
            {
                continue;
            }
            if let Some(op) = item.post.as_mut() {
                op.parameters.get_or_insert_with(Vec::new).push(param(
                    "Idempotency-Key",
                    ParameterIn::Header,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(64))
                        .pattern(Some("^[!-~]+$")),
                    "A retry with the same key (24 hours) gets the first answer; another body with it is refused (409)",
                ));
            }
            if let Some(op) = item.get.as_mut()
                && op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("List"))
            {
                let params = op.parameters.get_or_insert_with(Vec::new);
                if params.iter().any(|p| p.name == "limit") {
                    continue;
                }
                params.push(param(
                    "limit",
                    ParameterIn::Query,
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(1000)),
                    "At most this many (default 1000)",
                ));
                params.push(param(
                    "next_token",
                    ParameterIn::Query,
                    ObjectBuilder::new().schema_type(Type::String),
                    "Where the previous page ended (its `next_token`)",
                ));
            }
        }
    }
}

/// Declares the `sigv4` security scheme every operation requires.
struct SigV4;

impl Modify for SigV4 {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "sigv4",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "AWS Signature Version 4 (`AWS4-HMAC-SHA256`), service name `atrest`, the \
                 server's region (default `us-east-1`), signed with an atrest access key. \
                 The signature must cover `Host`, `X-Amz-Date` (which must be sent with \
                 it), and `Content-Type` and every `X-Amz-*` header the request carries; \
                 a request with one of those unsigned is refused (InvalidSignatureException).",
            ))),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "atrest REST API",
        description = "Accounts, users and access keys; the audit trail and metering; \
                       service keys; disks, snapshots and jobs; database instances and \
                       backups. Every operation is authenticated with AWS SigV4 (service \
                       `atrest`). Every error (4xx and 5xx) answers the `ErrorBody` shape. \
                       The AWS KMS JSON API is served at `POST /` and documented by AWS.",
    ),
    modifiers(&SigV4, &Conventions),
    security(("sigv4" = [])),
    paths(
        serve,
    ),
    tags(
        (name = "admin", description = "Accounts, users, access keys, policies, service keys"),
        (name = "audit", description = "The audit trail and metering"),
        (name = "disks", description = "Disks, snapshots and jobs"),
        (name = "databases", description = "Database instances and their backups"),
        (name = "projects", description = "Projects: a key per region, and the disks and instances under it"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

/// The paths of the endpoints declared with the REST framework
/// ([`crate::routes::api`]), from the router that serves them.
static FRAMEWORK: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();

/// Adds the framework's paths (and schemas) to the document; called once
/// the router is built, before the document is first served.
pub(crate) fn add_paths(doc: utoipa::openapi::OpenApi) {
    let _ = FRAMEWORK.set(doc);
}

/// The whole document: [`ApiDoc`] and the framework's routes.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let framework = FRAMEWORK
        .get()
        .cloned()
        .unwrap_or_else(|| crate::routes::api().split_for_parts().1);
    doc.merge(framework);
    doc
}

/// The document as JSON, built once.
pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| openapi().to_json().unwrap_or_else(|_| "{}".to_owned()))
}

/// `GET /v1/openapi.json`: the document (unauthenticated, like `/healthz`).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    operation_id = "GetOpenApiDocument",
    security(()),
    responses(
        (status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object),
    )
)]
pub(crate) async fn serve() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_with_every_operation() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"]["sigv4"]["name"],
            "Authorization"
        );
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/disks/{id}/rekey"));
        assert!(paths.contains_key("/v1/backups/{id}/restore"));
        assert!(!paths.contains_key("/"));
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
