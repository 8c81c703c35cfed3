//! The REST framework: one declaration per endpoint, everything else in
//! one place.
//!
//! An endpoint is declared once, with [`endpoint!`]: its method and path,
//! its typed path, query and body (unknown members refused), its typed
//! answer, its action (`disk:DeleteDisk`), how to name the resource the
//! action is on (an ARN), whether it pages and whether a `POST` with an
//! `Idempotency-Key` is answered once, and what it does. From that one
//! declaration come the handler (with its `#[utoipa::path]`), the router and
//! the OpenAPI document (`utoipa-axum`, [`crate::routes`]) and the
//! authorization. [`serve`] does what every endpoint shares, in this order:
//!
//! 1. read the body (bounded), authenticate the SigV4 signature (service
//!    `atrest`);
//! 2. read the path, the query and the body into their types;
//! 3. name the resource and authorize the action on it for the principal
//!    (identity policies, with the key service's policy engine: the
//!    account's root may do everything in its account, a user what a policy
//!    allows, an explicit Deny wins);
//! 4. answer a replayed `Idempotency-Key` from the cache (keyed by the
//!    principal), or run the endpoint and keep its answer's replay form,
//!    which by type holds no secret;
//! 5. page a list answer; record the request in the audit trail; answer.

pub(crate) mod body;
pub(crate) mod idempotency;
pub(crate) mod paging;

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_kms::{Call, Caller, RequestMeta};
use axum::extract::{FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::request::{
    Outcome, Peer, authenticate, read_body, refused_entry, refused_unauthenticated,
    rest_error_response,
};
use crate::trail::SharedTrail;

/// The resource an action is on, and the condition keys it brings.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    /// Its ARN, or `*` (lists, and creations AWS authorizes on `*`).
    pub arn: String,
    /// Condition keys: `aws:ResourceTag/<key>`, `aws:RequestTag/<key>`,
    /// `aws:TagKeys`.
    pub conditions: Vec<(String, Vec<String>)>,
}

impl Resource {
    /// Every resource of the kind (`*`).
    pub(crate) fn any() -> Self {
        Self::arn("*".into())
    }

    /// The resource named by `arn`.
    pub(crate) fn arn(arn: String) -> Self {
        Self {
            arn,
            conditions: Vec::new(),
        }
    }

    /// With the resource's tags: `aws:ResourceTag/<key>`.
    pub(crate) fn resource_tags(mut self, tags: &BTreeMap<String, String>) -> Self {
        for (k, v) in tags {
            self.conditions
                .push((format!("aws:ResourceTag/{k}"), vec![v.clone()]));
        }
        self
    }

    /// With the tags a creation asks for: `aws:RequestTag/<key>` and
    /// `aws:TagKeys`.
    pub(crate) fn request_tags(mut self, tags: &BTreeMap<String, String>) -> Self {
        for (k, v) in tags {
            self.conditions
                .push((format!("aws:RequestTag/{k}"), vec![v.clone()]));
        }
        self.conditions
            .push(("aws:TagKeys".to_owned(), tags.keys().cloned().collect()));
        self
    }
}

/// ARNs of atrest's resources. `service` is `disk`, `db` or `project`.
pub(crate) fn arn(caller: &Caller, service: &str, kind: &str, id: &str) -> String {
    format!(
        "arn:aws:{service}:{}:{}:{kind}/{id}",
        caller.region, caller.account
    )
}

/// An answer that a replay of its request may repeat: by its type, it holds
/// no secret. An answer with a secret (a new access key, a generated
/// password) gives a replay form without it ([`Endpoint::replay`]).
pub(crate) trait Replayable: Serialize {}

/// No path parameters.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct NoPath {}

/// No query parameters.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

/// No body (an empty body or `{}`).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoBody {}

/// What the framework needs of the server's state; the routes' state
/// implements it ([`crate::state`]), so that the framework knows no service.
pub(crate) trait Host: Send + Sync + 'static {
    /// The key service: authentication and authorization.
    fn kms(&self) -> &atrest_kms::KeyService;
    /// The audit trail every request is recorded in.
    fn trail(&self) -> &SharedTrail;
    /// How much of a body is read, and how long it may take.
    fn body_limits(&self) -> crate::request::BodyLimits;
    /// Derived SigV4 signing keys.
    fn signing_keys(&self) -> &atrest_sigv4::SigningKeyCache;
    /// Answers of recent idempotent `POST`s.
    fn idempotency(&self) -> &idempotency::Idempotency;
    /// For a "not found" on `path`: the error that names the other node
    /// hosting what the path names for `caller`'s account, if one does.
    fn elsewhere(&self, caller: &Caller, path: &str, err: &ApiError) -> Option<ApiError> {
        let _ = (caller, path, err);
        None
    }
}

/// One REST endpoint (see the module doc). Implemented by [`endpoint!`].
pub(crate) trait Endpoint: 'static {
    /// The state its resource and run functions see.
    type State: Host;
    /// The action authorized, audited and metered (`disk:CreateDisk`).
    const ACTION: &'static str;
    /// Whether the answer's one list pages (`limit`, `next_token`).
    const PAGED: bool;
    /// Whether a `POST` with an `Idempotency-Key` is answered once.
    const IDEMPOTENT: bool;
    /// The status of a successful answer.
    const STATUS: StatusCode;
    /// Path parameters.
    type Path: DeserializeOwned + Send + 'static;
    /// Query parameters (beyond `limit` and `next_token` of a paged list).
    type Query: DeserializeOwned + Send + 'static;
    /// The body.
    type Body: DeserializeOwned + Send + 'static;
    /// The answer.
    type Answer: Serialize;
    /// What a replay answers.
    type Replay: Replayable;

    /// The resource the action is on (names are resolved to what a policy
    /// names: a resource that does not exist still has an ARN, so that a
    /// refusal comes before a "not found").
    fn resource(
        st: &Self::State,
        caller: &Caller,
        path: &Self::Path,
        query: &Self::Query,
        body: &Self::Body,
    ) -> Result<Resource, ApiError>;

    /// Does it.
    fn run(
        st: &Self::State,
        call: &Call<'_>,
        path: Self::Path,
        query: Self::Query,
        body: Self::Body,
    ) -> Result<Self::Answer, ApiError>;

    /// The replay form of an answer.
    fn replay(answer: &Self::Answer) -> Self::Replay;

    /// The status of a successful answer (an endpoint whose answers differ
    /// says which).
    fn status(_answer: &Self::Answer) -> StatusCode {
        Self::STATUS
    }
}

/// The paging parameters of a paged list (none for `Paging<false>`).
pub(crate) struct Paging<const P: bool>;

impl<const P: bool> utoipa::IntoParams for Paging<P> {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        if !P {
            return Vec::new();
        }
        vec![
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("At most this many (default 1000)"))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(1000)),
                ))
                .build(),
            ParameterBuilder::new()
                .name("next_token")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("Where the previous page ended (its `next_token`)"))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ]
    }
}

/// The `Idempotency-Key` header of an idempotent `POST` (none for
/// `IdempotencyKey<false>`).
pub(crate) struct IdempotencyKey<const I: bool>;

impl<const I: bool> utoipa::IntoParams for IdempotencyKey<I> {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        if !I {
            return Vec::new();
        }
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "A retry by the same principal with the same key (24 hours) gets the first answer; another body with it is refused (409)",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(64))
                        .pattern(Some("^[!-~]+$")),
                ))
                .build(),
        ]
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(format!("encoding a response: {e}")))
}

/// Runs endpoint `E` for `req` (see the module doc).
pub(crate) async fn serve<E: Endpoint>(st: Arc<E::State>, req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let mut meta = RequestMeta::in_process();
    meta.source = peer.map_or_else(|| "unknown".into(), |p| p.to_string());
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let operation = E::ACTION;
    let outcome: Outcome<(StatusCode, Value)> = async {
        let refused = |meta: &RequestMeta, caller: Option<&Caller>, e: ApiError| Outcome {
            entry: Some(refused_entry(meta, operation, caller, &e)),
            result: Err(e),
        };
        let bytes = match read_body(body, &parts.headers, st.body_limits()).await {
            Ok(b) => b,
            Err(e) => return refused_unauthenticated(st.trail(), &meta, operation, e),
        };
        let (caller, akid) = match authenticate(
            st.kms(),
            st.signing_keys(),
            &parts,
            &bytes,
            crate::REST_SERVICE,
        ) {
            Ok(x) => x,
            Err(e) => return refused_unauthenticated(st.trail(), &meta, operation, e),
        };
        meta.access_key_id = Some(akid);
        let typed = async {
            let idem = if method == Method::POST && E::IDEMPOTENT {
                idempotency::key(&parts.headers)?
            } else {
                None
            };
            let page = E::PAGED.then(|| paging::page(&parts.uri)).transpose()?;
            let Path(p) = Path::<E::Path>::from_request_parts(&mut parts, &st)
                .await
                .map_err(|e| ApiError::BadRequestParts(e.body_text()))?;
            let q: E::Query = body::query(parts.uri.query().unwrap_or(""), E::PAGED)?;
            let b: E::Body = body::json(&bytes)?;
            Ok::<_, ApiError>((idem, page, p, q, b))
        }
        .await;
        let (idem, page, p, q, b) = match typed {
            Ok(x) => x,
            Err(e) => return refused(&meta, Some(&caller), e),
        };
        let (st2, meta2, path2) = (Arc::clone(&st), meta.clone(), path.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let call = Call::new(&caller, &meta2);
            call.set_operation(operation);
            let result: Result<(StatusCode, Value), ApiError> = (|| {
                let res = E::resource(&st2, &caller, &p, &q, &b)?;
                st2.kms()
                    .authorize_action(&call, operation, &res.arn, &res.conditions)?;
                let slot = idem.as_ref().map(|k| idempotency::Slot {
                    principal: caller.principal_arn(),
                    path: path2.clone(),
                    key: k.clone(),
                });
                if let Some(slot) = &slot
                    && let Some(replayed) = st2.idempotency().seen(slot, &bytes)?
                {
                    return Ok(replayed);
                }
                let answer = E::run(&st2, &call, p, q, b)?;
                let status = E::status(&answer);
                let value = encode(&answer)?;
                if let Some(slot) = slot {
                    st2.idempotency()
                        .keep(slot, &bytes, status, encode(&E::replay(&answer))?);
                }
                Ok((status, value))
            })();
            let result = result.map_err(|e| st2.elsewhere(&caller, &path2, &e).unwrap_or(e));
            let result = match (result, &page) {
                (Ok((s, v)), Some((limit, after))) => {
                    Ok((s, paging::paginate(v, *limit, after.as_deref())))
                }
                (r, _) => r,
            };
            let entry = (!call.recorded()).then(|| {
                let outcome = match &result {
                    Ok(_) => "Success",
                    Err(e) => e.parts().1,
                };
                st2.kms().audit_entry(&call, outcome)
            });
            (result, entry)
        })
        .await;
        match joined {
            Ok((result, entry)) => Outcome { result, entry },
            Err(e) => Outcome {
                result: Err(ApiError::Internal(format!("worker failed: {e}"))),
                entry: None,
            },
        }
    }
    .await;
    let mut result = outcome.result;
    if let Some(entry) = outcome.entry
        && let Err(e) = st.trail().record(entry).await
        && result.is_ok()
    {
        result = Err(ApiError::Internal(format!(
            "the audit trail cannot record the request ({e})"
        )));
    }
    match result {
        Ok((status, value)) => {
            // Reads can number thousands a second: logged at debug (an
            // info line costs about 8 µs); the audit trail records each.
            if method == Method::GET {
                tracing::debug!(request_id = %meta.request_id, %method, path, status = status.as_u16(), "rest request");
            } else {
                tracing::info!(request_id = %meta.request_id, %method, path, status = status.as_u16(), "rest request");
            }
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                value.to_string(),
            )
                .into_response()
        }
        Err(err) => {
            if err.is_server_fault() {
                // The details stay here; the client sees only that it failed.
                tracing::error!(request_id = %meta.request_id, %method, path, error = %err, "rest request failed");
            } else if err.before_authentication() {
                // Counted per address, logged with the aggregate record.
                tracing::debug!(request_id = %meta.request_id, %method, path, error = %err.parts().1, "rest request refused");
            } else {
                tracing::info!(request_id = %meta.request_id, %method, path, error = %err.parts().1, "rest request refused");
            }
            rest_error_response(&err, &meta.request_id)
        }
    }
}

/// Declares a REST endpoint once (see the module doc). Its functions see
/// the state named `AppState` where it is declared:
///
/// ```text
/// endpoint! {
///     /// Doc comment: the OpenAPI summary and description.
///     handler_name: post "/v1/things/{id}" => "svc:Action",
///     tag: "things", status: CREATED, paged: false, idempotent: true,
///     path: ThingId,            // optional: a Deserialize + IntoParams struct
///     query: ThingQuery,        // optional: a Deserialize + IntoParams struct
///     body: NewThing,           // optional: a Deserialize + ToSchema struct
///     answer: ThingView,        // Serialize + ToSchema (+ Replayable, or a replay: below)
///     replay: |a| a.clone(),    // optional: the secret-free replay form (default: the answer)
///     resource: |st, caller, path, query, body| Ok(Resource::any()),
///     run: |st, call, path, query, body| { ... },
///     status_of: |answer| StatusCode::OK,   // optional: when answers differ,
///     other_statuses: [OK],                  // with the statuses besides `status`
/// }
/// ```
macro_rules! endpoint {
    (
        $(#[doc = $doc:literal])*
        $handler:ident : $method:ident $route:literal => $action:literal,
        tag: $tag:literal, status: $status:ident, paged: $paged:literal, idempotent: $idem:literal,
        $(path: $pty:ty,)?
        $(query: $qty:ty,)?
        $(body: $bty:ty,)?
        answer: $aty:ty,
        $(replay: $rty:ty = $replay:expr,)?
        resource: $resource:expr,
        run: $run:expr,
        $(status_of: $status_of:expr, other_statuses: [$($other:ident),+ $(,)?],)?
    ) => {
        #[allow(non_camel_case_types, reason = "named after its handler")]
        pub(crate) enum $handler {}

        impl $crate::rest::Endpoint for $handler {
            type State = AppState;
            const ACTION: &'static str = $action;
            const PAGED: bool = $paged;
            const IDEMPOTENT: bool = $idem;
            const STATUS: ::http::StatusCode = ::http::StatusCode::$status;
            type Path = $crate::rest::endpoint!(@or $($pty)?, $crate::rest::NoPath);
            type Query = $crate::rest::endpoint!(@or $($qty)?, $crate::rest::NoQuery);
            type Body = $crate::rest::endpoint!(@or $($bty)?, $crate::rest::NoBody);
            type Answer = $aty;
            type Replay = $crate::rest::endpoint!(@or $($rty)?, $aty);

            fn resource(
                st: &AppState,
                caller: &::atrest_kms::Caller,
                path: &Self::Path,
                query: &Self::Query,
                body: &Self::Body,
            ) -> ::std::result::Result<$crate::rest::Resource, $crate::error::ApiError> {
                let f: fn(
                    &AppState,
                    &::atrest_kms::Caller,
                    &Self::Path,
                    &Self::Query,
                    &Self::Body,
                ) -> ::std::result::Result<$crate::rest::Resource, $crate::error::ApiError> = $resource;
                f(st, caller, path, query, body)
            }

            fn run(
                st: &AppState,
                call: &::atrest_kms::Call<'_>,
                path: Self::Path,
                query: Self::Query,
                body: Self::Body,
            ) -> ::std::result::Result<Self::Answer, $crate::error::ApiError> {
                let f: fn(
                    &AppState,
                    &::atrest_kms::Call<'_>,
                    Self::Path,
                    Self::Query,
                    Self::Body,
                ) -> ::std::result::Result<Self::Answer, $crate::error::ApiError> = $run;
                f(st, call, path, query, body)
            }

            fn replay(answer: &Self::Answer) -> Self::Replay {
                $crate::rest::endpoint!(@replay answer $(, $replay)?)
            }

            $(
                fn status(answer: &Self::Answer) -> ::http::StatusCode {
                    let f: fn(&Self::Answer) -> ::http::StatusCode = $status_of;
                    f(answer)
                }
            )?
        }

        $(#[doc = $doc])*
        #[utoipa::path(
            $method,
            path = $route,
            tag = $tag,
            extensions(("x-atrest-action" = json!($action))),
            params(
                $($pty,)?
                $($qty,)?
                $crate::rest::Paging<$paged>,
                $crate::rest::IdempotencyKey<$idem>,
            ),
            $(request_body = $bty,)?
            responses(
                (status = $status, description = "Success", body = $aty),
                $($((status = $other, description = "Success", body = $aty),)+)?
                (status = "4XX", description = "Refused", body = $crate::error::ErrorBody),
                (status = "5XX", description = "Server fault", body = $crate::error::ErrorBody),
            )
        )]
        #[allow(unused_qualifications, reason = "utoipa's expansion of the parameters")]
        pub(crate) async fn $handler(
            ::axum::extract::State(st): ::axum::extract::State<::std::sync::Arc<AppState>>,
            req: ::axum::extract::Request,
        ) -> ::axum::response::Response {
            $crate::rest::serve::<$handler>(st, req).await
        }
    };
    (@or , $d:ty) => { $d };
    (@or $t:ty, $d:ty) => { $t };
    (@replay $a:ident, $f:expr) => { ($f)($a) };
    (@replay $a:ident) => { ::std::clone::Clone::clone($a) };
}
pub(crate) use endpoint;
