//! One route's operation: its security, parameters, body and answers.

use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::api::route::{AuthClass, Operation, Route, Success};

/// The operation's key in its path item: `get`, `post`.
pub(super) fn method(route: &Route) -> String {
    route.method.as_str().to_ascii_lowercase()
}

/// The operation of `route`, its schemas added to the generators.
pub(super) fn operation(
    route: &Route,
    op: &Operation,
    requests: &mut SchemaGenerator,
    responses: &mut SchemaGenerator,
) -> Value {
    let mut out = Map::new();
    out.insert("summary".into(), op.summary.into());
    out.insert(
        "operationId".into(),
        format!(
            "{}{}",
            method(route),
            route.path.replace(['/', '-', '.'], "_")
        )
        .into(),
    );
    let mut errors: Vec<u16> = op.errors.to_vec();
    // Any request addressed to a host name the agent does not answer for.
    errors.push(421);
    match route.auth {
        AuthClass::Open => {
            out.insert("security".into(), json!([]));
        }
        AuthClass::Read => {
            out.insert("security".into(), json!([{}, {"bearer": []}]));
            errors.push(401);
        }
        AuthClass::Acting | AuthClass::Inference => {
            out.insert("security".into(), json!([{"bearer": []}]));
            errors.extend([401, 429]);
        }
    }
    // `{name}` segments of the path, then the query's parameters.
    let mut params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string", "minLength": 1},
            })
        })
        .collect();
    if !op.query.is_empty() {
        params.extend(op.query.iter().map(|p| {
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
        }));
    }
    if !params.is_empty() {
        out.insert("parameters".into(), params.into());
    }
    if let Some(body) = op.body {
        // An empty body reads as `{}` (which the types with a required field then refuse).
        out.insert(
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
    let ok = match op.success {
        Success::Json(schema) => json!({
            "description": "Success.",
            "content": {"application/json": {"schema": schema(responses)}},
        }),
        Success::Text(content_type) => json!({
            "description": "Success.",
            "content": {content_type: {"schema": {"type": "string"}}},
        }),
        Success::PassedThrough => json!({
            "description": "The model server's answer, passed through.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
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
    out.insert("responses".into(), answers.into());
    out.into()
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
            "The device is busy with another switch, unload, free or reset (code `busy`); the \
                model's footprint plus the headroom does not fit in the free memory plus what the \
                models it may replace hold (code `insufficient_memory`, with the figures); or, \
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
