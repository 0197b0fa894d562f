//! The agent API as an OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Built from the route table (`api::routes`): each route's operation is declared with its
//! handler, so the document lists exactly the routes the router serves (test-only ones aside).
//! Every schema in it is generated from the crds types by schemars (JSON Schema 2020-12, the
//! dialect of OpenAPI 3.1): request bodies as they deserialize, responses as they serialize.
//! Schemathesis runs against it in the test suite (`tests/tests/schemathesis.rs`).

mod operation;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use axum::{http::header::CONTENT_TYPE, response::IntoResponse};
use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};
use vramkeeper_crds::api;

use super::route::{AuthClass, Operation, Route};

/// Where the document is served.
pub(super) const PATH: &str = "/openapi.json";

/// The document, built once from the whole table; `api::router` builds it before serving, so
/// that a schema which cannot be built fails the start rather than a request.
pub(super) static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| document(&super::routes(true)).to_string());

pub(super) fn routes() -> Vec<Route> {
    vec![Route::get(
        PATH,
        serve,
        AuthClass::Open,
        Operation::document("This document."),
    )]
}

async fn serve() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
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

/// The OpenAPI document of `routes` (those with an operation).
pub(super) fn document(routes: &[Route]) -> Value {
    // Request bodies as the agent reads them (defaults make fields optional), responses as it
    // writes them: two generators, one set of components.
    let mut requests = generator(false);
    let mut responses = generator(true);
    // Every error answer refers to it as `#/components/schemas/ErrorBody`.
    responses.subschema_for::<api::ErrorBody>();
    let mut paths = Map::new();
    for route in routes {
        let Some(op) = &route.operation else {
            continue;
        };
        let operation = operation::operation(route, op, &mut requests, &mut responses);
        paths
            .entry(route.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects")
            .insert(operation::method(route), operation);
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
