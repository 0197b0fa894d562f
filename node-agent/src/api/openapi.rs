//! The agent API as an OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Every schema in it is generated from the crds types by schemars (JSON Schema 2020-12, the
//! dialect of OpenAPI 3.1): request bodies as they deserialize, responses as they serialize.
//! Only the route table ([`ROUTES`]) and the query parameters are written here. Schemathesis
//! runs against it in the test suite (`tests/tests/schemathesis.rs`).

use std::sync::Arc;

use axum::{Router, http::header::CONTENT_TYPE, routing::get};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};
use vramkeeper_crds::{api, openai};

use crate::app::App;

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (liveness, readiness, metrics, this document).
    Open,
    /// Anyone, unless the agent runs with `--auth-reads`.
    Read,
    /// The bearer token whenever one is configured; rate limited.
    Act,
    /// Inference, which can load and unload models: the token or an inference key whenever
    /// either is configured (unless `--inference-without-auth`); rate limited per credential.
    Serve,
}

/// A schema added to a generator, as a `$ref` (or inline for simple types).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a route answers on success.
#[derive(Clone, Copy)]
pub enum Success {
    /// JSON of a crds type.
    Json(SchemaFn),
    /// Plain text of this content type.
    Text(&'static str),
    /// An OpenAPI document (this one).
    Document,
}

/// One route of the agent's API.
pub struct Route {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The JSON body it takes (POST routes).
    pub body: Option<SchemaFn>,
    /// The query parameters it takes.
    pub query: &'static [Param],
    /// What it answers on success.
    pub success: Success,
    /// The error statuses the route itself may answer (auth and body errors are added).
    pub errors: &'static [u16],
}

/// A query parameter: an unsigned integer with a range and a default.
pub struct Param {
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

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

const GPU: Param = Param {
    name: "gpu",
    description: "Device index.",
    min: 0,
    max: u32::MAX as u64,
    default: 0,
};

const WINDOW: Param = Param {
    name: "window",
    description: "Seconds of history, up to a day.",
    min: 1,
    max: 86_400,
    default: 900,
};

/// Routes that act on the device: 404 unknown model or device, 409 busy, 502 a load failed.
const ACTING_ERRORS: &[u16] = &[404, 409, 502];
/// Inference may switch first (as acting routes), or find the device contended (503).
const SERVING_ERRORS: &[u16] = &[404, 409, 502, 503];

/// Every route of the agent but the status page's files and the test-only `/v1/debug/*`.
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/healthz",
        summary: "Liveness: the process answers.",
        access: Access::Open,
        body: None,
        query: &[],
        success: Success::Text("text/plain; charset=utf-8"),
        errors: &[],
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "Readiness: every device's memory can be read (503 when not).",
        access: Access::Open,
        body: None,
        query: &[],
        success: Success::Text("text/plain; charset=utf-8"),
        errors: &[503],
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "OpenMetrics: memory, ghost, switches, remediations, requests.",
        access: Access::Open,
        body: None,
        query: &[],
        success: Success::Text("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        errors: &[],
    },
    Route {
        method: "get",
        path: PATH,
        summary: "This document.",
        access: Access::Open,
        body: None,
        query: &[],
        success: Success::Document,
        errors: &[],
    },
    Route {
        method: "get",
        path: "/v1/status",
        summary: "Every device: memory, baseline, ghost and its sources, zombie state, models.",
        access: Access::Read,
        body: None,
        query: &[],
        success: Success::Json(schema::<api::StatusResponse>),
        errors: &[],
    },
    Route {
        method: "get",
        path: "/v1/models",
        summary: "The catalog, with each model's state on the device.",
        access: Access::Read,
        body: None,
        query: &[GPU],
        success: Success::Json(schema::<api::ModelsResponse>),
        errors: &[404, 422],
    },
    Route {
        method: "get",
        path: "/v1/history",
        summary: "Memory samples, switches and remediations of a time window.",
        access: Access::Read,
        body: None,
        query: &[GPU, WINDOW],
        success: Success::Json(schema::<api::HistoryResponse>),
        errors: &[404, 422],
    },
    Route {
        method: "post",
        path: "/v1/models/switch",
        summary: "Unload the active model, verify the release, load this one and measure it.",
        access: Access::Act,
        body: Some(schema::<api::SwitchRequest>),
        query: &[],
        success: Success::Json(schema::<api::SwitchResponse>),
        errors: ACTING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/models/unload",
        summary: "Unload the active model and verify the release.",
        access: Access::Act,
        body: Some(schema::<api::UnloadRequest>),
        query: &[],
        success: Success::Json(schema::<api::UnloadResponse>),
        errors: ACTING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/models/test-load",
        summary: "Load every catalog model in turn and measure it; restore the active one.",
        access: Access::Act,
        body: Some(schema::<api::TestLoadRequest>),
        query: &[],
        success: Success::Json(schema::<api::TestLoadResponse>),
        errors: ACTING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/gpu/free",
        summary: "Clean allocator pools, end zombie workers and orphans.",
        access: Access::Act,
        body: Some(schema::<api::RemediateRequest>),
        query: &[],
        success: Success::Json(schema::<api::RemediationReport>),
        errors: ACTING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/gpu/reset",
        summary: "Stop every worker, wait for the baseline, reload the active model.",
        access: Access::Act,
        body: Some(schema::<api::RemediateRequest>),
        query: &[],
        success: Success::Json(schema::<api::RemediationReport>),
        errors: ACTING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/infer",
        summary: "A forward pass of a synthetic model; switches to it first if needed.",
        access: Access::Serve,
        body: Some(schema::<api::InferRequest>),
        query: &[],
        success: Success::Json(schema::<api::InferResponse>),
        errors: SERVING_ERRORS,
    },
    Route {
        method: "post",
        path: "/v1/embeddings",
        summary: "OpenAI-style sentence embeddings; switches to the model first if needed.",
        access: Access::Serve,
        body: Some(schema::<openai::EmbeddingRequest>),
        query: &[],
        success: Success::Json(schema::<openai::EmbeddingResponse>),
        errors: SERVING_ERRORS,
    },
];

/// Serves the document, built once when the router is.
pub fn router() -> Router<Arc<App>> {
    let body = document().to_string();
    Router::new().route(
        PATH,
        get(move || {
            let body = body.clone();
            async move { ([(CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

/// Generators for OpenAPI 3.1: JSON Schema 2020-12 with definitions under `components`.
fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let settings = if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    };
    settings.into_generator()
}

/// The whole OpenAPI document.
pub fn document() -> Value {
    // Request bodies as the agent reads them (defaults make fields optional), responses as it
    // writes them: two generators, one set of components.
    let mut requests = generator(false);
    let mut responses = generator(true);
    // Every error answer refers to it as `#/components/schemas/ErrorBody`.
    responses.subschema_for::<api::ErrorBody>();
    let mut paths = Map::new();
    for route in ROUTES {
        let operation = operation(route, &mut requests, &mut responses);
        paths
            .entry(route.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects")
            .insert(route.method.into(), operation);
    }
    let mut schemas = requests.take_definitions(true);
    for (name, schema) in responses.take_definitions(true) {
        match schemas.get(&name) {
            // The same type on both sides must describe one shape (enums, plain structs).
            Some(existing) => assert_eq!(
                existing, &schema,
                "{name} reads and writes differently; give one side its own type"
            ),
            None => {
                schemas.insert(name, schema);
            }
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "vramkeeper node agent",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs models in worker processes, measures what each really costs, \
                finds the memory nothing accounts for and frees it. Errors are \
                {\"error\": {\"code\", \"message\"}}. Acting routes need the bearer token \
                whenever one is configured (reads too with --auth-reads); inference routes need \
                the token or an inference key (--api-key). Requests addressed to a host name \
                that is not an IP address, localhost, the node name or an --allowed-hosts name \
                get 421; POSTs from a browser page of another origin get 403. An empty body \
                reads as {}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    });
    bound_integers(&mut doc);
    doc
}

fn operation(
    route: &Route,
    requests: &mut SchemaGenerator,
    responses: &mut SchemaGenerator,
) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), route.summary.into());
    op.insert(
        "operationId".into(),
        format!(
            "{}{}",
            route.method,
            route.path.replace(['/', '-', '.'], "_")
        )
        .into(),
    );
    let mut errors: Vec<u16> = route.errors.to_vec();
    // Any request addressed to a host name the agent does not answer for.
    errors.push(421);
    match route.access {
        Access::Open => {
            op.insert("security".into(), json!([]));
        }
        Access::Read => {
            op.insert("security".into(), json!([{}, {"bearer": []}]));
            errors.push(401);
        }
        Access::Act | Access::Serve => {
            op.insert("security".into(), json!([{"bearer": []}]));
            errors.extend([401, 429]);
        }
    }
    if !route.query.is_empty() {
        let params: Vec<Value> = route
            .query
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": "query",
                    "required": false,
                    "description": p.description,
                    "schema": {
                        "type": "integer",
                        "minimum": p.min,
                        "maximum": p.max,
                        "default": p.default,
                    },
                })
            })
            .collect();
        op.insert("parameters".into(), params.into());
    }
    if let Some(body) = route.body {
        // An empty body reads as `{}` (which the types with a required field then refuse).
        op.insert(
            "requestBody".into(),
            json!({
                "required": false,
                "content": {"application/json": {"schema": body(requests)}},
            }),
        );
        // Malformed JSON, too large, not JSON, wrong shape or values; a page of another origin.
        errors.extend([400, 403, 413, 415, 422]);
    }
    let mut answers = Map::new();
    let ok = match route.success {
        Success::Json(schema) => json!({
            "description": "Success.",
            "content": {"application/json": {"schema": schema(responses)}},
        }),
        Success::Text(content_type) => json!({
            "description": "Success.",
            "content": {content_type: {"schema": {"type": "string"}}},
        }),
        Success::Document => json!({
            "description": "Success.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["openapi", "info", "paths"],
            }}},
        }),
    };
    answers.insert("200".into(), ok);
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        answers.insert(status.to_string(), error_response(route, status));
    }
    op.insert("responses".into(), answers.into());
    op.into()
}

fn error_response(route: &Route, status: u16) -> Value {
    // readyz says why it is not ready in plain text; every other error is an ErrorBody.
    if route.path == "/readyz" && status == 503 {
        return json!({
            "description": "Memory readings fail, or the state directory is not writable.",
            "content": {"text/plain; charset=utf-8": {"schema": {"type": "string"}}},
        });
    }
    let description = match status {
        400 => "Malformed JSON.",
        401 => "No or wrong bearer token (or inference key).",
        403 => "A browser page of another origin (its Origin header) may not call this route.",
        404 => "Unknown model or device.",
        409 => {
            "The device is busy with another switch, unload, free or reset (code `busy`); or, \
                on inference routes, the model named is not the one the device's GpuModel wants \
                (code `not_desired`): the request would switch it away."
        }
        413 => {
            "The body exceeds the 1 MiB limit, or the request a bound on work (inputs, \
                characters, models)."
        }
        415 => "No Content-Type: application/json.",
        421 => "Addressed to a host name the agent does not answer for (see --allowed-hosts).",
        422 => {
            "Well-formed, but not acceptable values (a model too big for the device \
                included)."
        }
        429 => {
            "Too many requests (acting routes, or inference with one credential); see \
                Retry-After."
        }
        502 => "A model failed to load or to answer.",
        503 => "The device is contended or not ready.",
        _ => "Error.",
    };
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    if status == 429 {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds until a request is allowed again.",
                "schema": {"type": "integer", "minimum": 1},
            },
        });
    }
    response
}

/// schemars bounds unsigned integers below only; serde rejects what does not fit, so say so.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let max = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some(u8::MAX as u64),
                Some("uint16") => Some(u16::MAX as u64),
                Some("uint32") => Some(u32::MAX as u64),
                Some("uint64" | "uint") => Some(u64::MAX),
                _ => None,
            };
            if let Some(max) = max
                && map.get("type").and_then(Value::as_str) == Some("integer")
            {
                map.entry("maximum").or_insert(max.into());
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(method, path)` of every `.route("PATH", METHOD(` in the route files the API merges.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let sources = [
            include_str!("health.rs"),
            include_str!("status.rs"),
            include_str!("models.rs"),
            include_str!("gpu.rs"),
            include_str!("infer.rs"),
            include_str!("embeddings.rs"),
            include_str!("mod.rs"),
        ];
        let mut found = BTreeSet::new();
        for source in sources {
            for chunk in source.split(".route(").skip(1) {
                let Some(rest) = chunk.trim_start().strip_prefix('"') else {
                    continue;
                };
                let Some((path, rest)) = rest.split_once('"') else {
                    continue;
                };
                let method = rest
                    .trim_start_matches([',', ' ', '\n'])
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .trim();
                found.insert((method.to_string(), path.to_string()));
            }
        }
        found
    }

    #[test]
    fn the_document_lists_every_route_of_the_router() {
        let in_source = routes_in_source();
        assert!(
            in_source.len() >= 13,
            "the scan found too little: {in_source:?}"
        );
        let mut documented: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        // This route is built from PATH, not a literal the scan can see.
        documented.remove(&("get".to_string(), PATH.to_string()));
        assert_eq!(documented, in_source);

        // And the document built from the table holds each of them.
        let doc = document();
        for route in ROUTES {
            assert!(
                doc["paths"][route.path][route.method].is_object(),
                "{} {} is missing from the document",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn the_document_is_json_and_every_reference_resolves() {
        let text = document().to_string();
        let doc: Value = serde_json::from_str(&text).expect("the document parses as JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "SwitchRequest",
            "UnloadRequest",
            "TestLoadRequest",
            "RemediateRequest",
            "InferRequest",
            "EmbeddingRequest",
            "ErrorBody",
            "StatusResponse",
        ] {
            assert!(schemas.contains_key(name), "{name} is not in components");
        }
        let mut refs = vec![];
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} points outside components"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn acting_routes_need_the_token_and_bodies_are_bounded() {
        let doc = document();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method];
            let responses = op["responses"].as_object().unwrap();
            if matches!(route.access, Access::Act | Access::Serve) {
                assert_eq!(op["security"], json!([{"bearer": []}]), "{}", route.path);
                assert!(responses.contains_key("401") && responses.contains_key("429"));
            }
            assert!(responses.contains_key("421"), "{}", route.path);
            if route.body.is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{} {status}", route.path);
                }
            }
        }
        // Request bodies refuse unknown fields where the types do, and bound integers.
        for path in ["/v1/infer", "/v1/embeddings"] {
            assert_eq!(
                doc["paths"][path]["post"]["security"],
                json!([{"bearer": []}])
            );
        }
        let switch = &doc["components"]["schemas"]["SwitchRequest"];
        assert_eq!(switch["additionalProperties"], false);
        assert_eq!(switch["properties"]["gpu"]["maximum"], u32::MAX);
        assert_eq!(switch["required"], json!(["model"]));
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
