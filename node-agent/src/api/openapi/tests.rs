use std::collections::BTreeSet;

use super::{operation::method, *};
use crate::api::routes;

/// Every route, the test-only ones included.
fn table() -> Vec<Route> {
    routes(true)
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_table() {
    let doc = document(&table());
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.insert((method.clone(), path.clone()));
        }
    }
    let documented: BTreeSet<(String, String)> = table()
        .iter()
        .filter(|r| r.operation.is_some())
        .map(|r| (method(r), r.path.to_string()))
        .collect();
    assert_eq!(listed, documented);
    // The ones left out are the test-only routes, and only those.
    let left_out: Vec<&str> = table()
        .iter()
        .filter(|r| r.operation.is_none())
        .map(|r| r.path)
        .collect();
    assert!(!left_out.is_empty());
    for path in left_out {
        assert!(
            path.starts_with("/v1/debug/"),
            "{path} is left out of the document"
        );
    }
    assert!(
        routes(false).iter().all(|r| r.operation.is_some()),
        "without test ops, every route is documented"
    );
    // What is served is this document.
    assert_eq!(*DOCUMENT, doc.to_string());
}

#[test]
fn each_route_says_its_auth_class_in_the_document() {
    let doc = document(&table());
    for route in table().iter().filter(|r| r.operation.is_some()) {
        let op = &doc["paths"][route.path][method(route)];
        let want = match route.auth {
            AuthClass::Open => json!([]),
            AuthClass::Read => json!([{}, {"bearer": []}]),
            AuthClass::Acting | AuthClass::Inference => json!([{"bearer": []}]),
        };
        assert_eq!(op["security"], want, "{} {}", route.method, route.path);
    }
}

#[test]
fn the_document_is_json_and_every_reference_resolves() {
    let text = DOCUMENT.as_str();
    let doc: Value = serde_json::from_str(text).expect("the document parses as JSON");
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
    let doc = document(&table());
    for route in table() {
        let Some(operation) = &route.operation else {
            continue;
        };
        let op = &doc["paths"][route.path][method(&route)];
        let responses = op["responses"].as_object().unwrap();
        if matches!(route.auth, AuthClass::Acting | AuthClass::Inference) {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{}", route.path);
            assert!(responses.contains_key("401") && responses.contains_key("429"));
        }
        assert!(responses.contains_key("421"), "{}", route.path);
        if operation.body.is_some() {
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
