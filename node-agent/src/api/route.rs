//! The route table's entry: a route of the API declared once, with its handler, who may call
//! it and its OpenAPI operation. Each route file exports its routes (`routes()`, beside the
//! handlers); `api::router` builds the router from the table, guarding each route by its
//! class, and `api::openapi` the document.

use std::sync::Arc;

use axum::{
    handler::Handler,
    http::Method,
    routing::{self, MethodRouter},
};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::app::App;

/// Who may call a route (the checks are `crate::access`'s, applied by `api::auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthClass {
    /// Anyone (liveness, readiness, metrics, the OpenAPI document).
    Open,
    /// Anyone, unless the agent runs with `--auth-reads`.
    Read,
    /// The bearer token whenever one is configured; rate limited.
    Acting,
    /// Inference, which can load and unload models: the token or an inference key whenever
    /// either is configured (unless `--inference-without-auth`); rate limited per credential.
    Inference,
}

/// One route of the agent's API.
pub(crate) struct Route {
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: &'static str,
    /// Its handler, for this method only.
    pub handler: MethodRouter<Arc<App>>,
    /// Who may call it.
    pub auth: AuthClass,
    /// What the OpenAPI document says of it; `None` for test-only routes, which it leaves out.
    pub operation: Option<Operation>,
}

impl Route {
    /// A `GET` route (which answers `HEAD` too).
    pub(crate) fn get<H, T>(
        path: &'static str,
        handler: H,
        auth: AuthClass,
        operation: Operation,
    ) -> Self
    where
        H: Handler<T, Arc<App>>,
        T: 'static,
    {
        Self::new(
            Method::GET,
            path,
            routing::get(handler),
            auth,
            Some(operation),
        )
    }

    /// A `POST` route.
    pub(crate) fn post<H, T>(
        path: &'static str,
        handler: H,
        auth: AuthClass,
        operation: Operation,
    ) -> Self
    where
        H: Handler<T, Arc<App>>,
        T: 'static,
    {
        Self::new(
            Method::POST,
            path,
            routing::post(handler),
            auth,
            Some(operation),
        )
    }

    /// A test-only `POST` route (`--enable-test-ops`), left out of the document.
    pub(crate) fn test_only_post<H, T>(path: &'static str, handler: H, auth: AuthClass) -> Self
    where
        H: Handler<T, Arc<App>>,
        T: 'static,
    {
        Self::new(Method::POST, path, routing::post(handler), auth, None)
    }

    fn new(
        method: Method,
        path: &'static str,
        handler: MethodRouter<Arc<App>>,
        auth: AuthClass,
        operation: Option<Operation>,
    ) -> Self {
        Self {
            method,
            path,
            handler,
            auth,
            operation,
        }
    }
}

/// A schema added to a generator, as a `$ref` (or inline for simple types).
pub(crate) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a route answers on success.
#[derive(Clone, Copy)]
pub(crate) enum Success {
    /// JSON of a crds type.
    Json(SchemaFn),
    /// Plain text of this content type.
    Text(&'static str),
    /// An OpenAPI document (the agent's own).
    Document,
    /// Whatever a model's own server answers: JSON, or server-sent events for a stream.
    PassedThrough,
}

/// The body of a request passed through to a model's server: any JSON object naming a
/// model; every other field is the server's business.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct PassedThroughBody {
    /// The catalog name of a server model.
    model: String,
    /// Answer server-sent events, chunk by chunk.
    stream: Option<bool>,
}

/// A route's OpenAPI operation: what it does, takes and answers.
pub(crate) struct Operation {
    /// One line on what it does.
    pub summary: &'static str,
    /// The JSON body it takes (POST routes).
    pub body: Option<SchemaFn>,
    /// The query parameters it takes.
    pub query: &'static [Param],
    /// What it answers on success.
    pub success: Success,
    /// The error statuses the route itself may answer (auth and body errors are added).
    pub errors: &'static [u16],
}

impl Operation {
    /// Answers JSON of `T`.
    pub(crate) fn json<T: JsonSchema>(summary: &'static str) -> Self {
        Self::new(summary, Success::Json(schema::<T>))
    }

    /// Answers plain text of `content_type`.
    pub(crate) fn text(summary: &'static str, content_type: &'static str) -> Self {
        Self::new(summary, Success::Text(content_type))
    }

    /// Takes any JSON object naming a model and answers what the model's server answers.
    pub(crate) fn passed_through(summary: &'static str) -> Self {
        Self::new(summary, Success::PassedThrough).body::<PassedThroughBody>()
    }

    /// Answers an OpenAPI document.
    pub(crate) fn document(summary: &'static str) -> Self {
        Self::new(summary, Success::Document)
    }

    fn new(summary: &'static str, success: Success) -> Self {
        Self {
            summary,
            body: None,
            query: &[],
            success,
            errors: &[],
        }
    }

    /// Takes a JSON body of `T`.
    pub(crate) fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some(schema::<T>);
        self
    }

    /// Takes these query parameters.
    pub(crate) fn query(mut self, query: &'static [Param]) -> Self {
        self.query = query;
        self
    }

    /// May answer these error statuses (beyond those of auth and bodies).
    pub(crate) fn errors(mut self, errors: &'static [u16]) -> Self {
        self.errors = errors;
        self
    }
}

/// A query parameter: an unsigned integer with a range and a default.
pub(crate) struct Param {
    /// Its name.
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Value when absent.
    pub default: u64,
}

/// `?gpu=`: which device.
pub(crate) const GPU: Param = Param {
    name: "gpu",
    description: "Device index.",
    min: 0,
    max: u32::MAX as u64,
    default: 0,
};

/// `?window=`: seconds of history.
pub(crate) const WINDOW: Param = Param {
    name: "window",
    description: "Seconds of history, up to a day.",
    min: 1,
    max: 86_400,
    default: 900,
};

/// Routes that act on the device: 404 unknown model or device, 409 busy, 502 a load failed.
pub(crate) const ACTING_ERRORS: &[u16] = &[404, 409, 502];
/// Inference may switch first (as acting routes), or find the device contended (503).
pub(crate) const SERVING_ERRORS: &[u16] = &[404, 409, 502, 503];
