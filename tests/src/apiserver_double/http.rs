//! The double's HTTP face: the Kubernetes REST paths kube-rs calls, JSON in and out, watches
//! as newline-delimited JSON streams.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{
    Shared,
    managed_fields::Operation,
    patch::{self, PatchKind, apply_patch},
    store::{Change, Key, Resource, check_field_selector, fields_match, labels_match},
    strict,
};

/// One request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The RBAC verb it needs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Resource, with the subresource as `gpumodels/status`.
    pub resource: String,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// `fieldManager`, for writes that name one.
    pub field_manager: Option<String>,
}

struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn error(code: u16, message: impl Into<String>) -> Response {
    let reason = match code {
        400 => "BadRequest",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn ok(code: StatusCode, body: &Value) -> Response {
    (code, axum::Json(body.clone())).into_response()
}

fn parse(path: &str) -> Result<Target, (u16, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return Err((404, format!("no such path {path}"))),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(*s)),
        _ => return Err((404, format!("no such path {path}"))),
    };
    let resource = Resource::find(group, plural)
        .ok_or_else(|| (404, format!("the double serves no {group}/{plural}")))?;
    match sub {
        None => {}
        Some("status") if resource.status_subresource => {}
        Some(s) => return Err((404, format!("no subresource {s} of {plural}"))),
    }
    Ok(Target {
        resource,
        namespace,
        name,
        status: sub.is_some(),
    })
}

/// Serves every request.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if *shared.outage.borrow() {
        shared
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return error(503, "the API server double is down (a test's outage)");
    }
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(&uri)
        .map(|q: axum::extract::Query<HashMap<String, String>>| q.0)
        .unwrap_or_default();
    let target = match parse(uri.path()) {
        Ok(t) => t,
        Err((code, m)) => return error(code, m),
    };
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, &target.name) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "unknown",
    };
    shared.requests.lock().unwrap().push(RequestRecord {
        method: method.to_string(),
        uri: uri.to_string(),
        verb: verb.into(),
        group: target.resource.group.into(),
        resource: if target.status {
            format!("{}/status", target.resource.plural)
        } else {
            target.resource.plural.into()
        },
        namespace: target.namespace.clone(),
        field_manager: query.get("fieldManager").cloned(),
    });
    let parsed_body = || -> Result<Value, (u16, String)> {
        serde_json::from_slice(&body).map_err(|e| (400, format!("the body is not JSON: {e}")))
    };
    if let Err((code, m)) = check_field_selector(
        target.resource,
        query.get("fieldSelector").map(String::as_str),
    ) {
        return error(code, m);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let apply = content_type.starts_with("application/apply-patch+yaml");
    let manager = || {
        patch::field_manager(
            query.get("fieldManager").map(String::as_str),
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            verb == "patch" && apply,
        )
    };
    match (verb, target.name.clone()) {
        ("watch", _) => watch_stream(shared, target, &query),
        ("list", None) => list(&shared, &target, &query),
        ("get", Some(name)) => {
            let key = Key::new(target.resource, target.namespace.as_deref(), &name);
            match shared.store.lock().unwrap().objects.get(&key) {
                Some(s) => ok(StatusCode::OK, &s.object),
                None => error(
                    404,
                    format!("{} {name:?} not found", target.resource.plural),
                ),
            }
        }
        ("create", None) => {
            let (object, manager) = match parsed_body().and_then(|b| Ok((b, manager()?))) {
                Ok(v) => v,
                Err((code, m)) => return error(code, m),
            };
            match shared.create(
                target.resource,
                target.namespace.as_deref(),
                object,
                &manager,
            ) {
                Ok(c) => ok(StatusCode::CREATED, &c.object),
                Err((code, m)) => error(code, m),
            }
        }
        ("update", Some(name)) => {
            let (object, manager) = match parsed_body().and_then(|b| Ok((b, manager()?))) {
                Ok(v) => v,
                Err((code, m)) => return error(code, m),
            };
            replace(&shared, &target, &name, object, &manager)
        }
        ("patch", Some(name)) => {
            let force = query.get("force").is_some_and(|f| f == "true");
            let request = parsed_body().and_then(|body| {
                Ok((
                    body,
                    PatchKind::from_request(content_type, force)?,
                    manager()?,
                ))
            });
            let (object, kind, manager) = match request {
                Ok(r) => r,
                Err((code, m)) => return error(code, m),
            };
            patch(&shared, &target, &name, &kind, &object, &manager)
        }
        ("delete", Some(name)) => {
            let key = Key::new(target.resource, target.namespace.as_deref(), &name);
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let stored = shared
                .store
                .lock()
                .unwrap()
                .objects
                .get(&key)
                .map(|s| s.object.clone());
            if let Some(stored) = &stored {
                let what = format!("{} {name:?}", target.resource.plural);
                if let Err((code, m)) = strict::precondition(stored, &options, &what) {
                    return error(code, m);
                }
            }
            match shared.delete(&key) {
                Some(object) => ok(StatusCode::OK, &object),
                None => error(
                    404,
                    format!("{} {name:?} not found", target.resource.plural),
                ),
            }
        }
        _ => error(405, format!("{method} is not served on {}", uri.path())),
    }
}

fn in_scope(target: &Target, key: &Key) -> bool {
    key.resource
        == (
            target.resource.group.to_string(),
            target.resource.plural.to_string(),
        )
        && (target.namespace.is_none() || key.namespace == target.namespace)
}

/// Lists, in pages when `limit` is given: `metadata.continue` names where the next page
/// starts, and every page carries the first page's `resourceVersion`.
/// <https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks>
fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Response {
    let store = shared.store.lock().unwrap();
    let labels = query.get("labelSelector").map(String::as_str);
    let fields = query.get("fieldSelector").map(String::as_str);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, s)| {
            in_scope(target, k)
                && labels_match(&s.object, labels)
                && fields_match(&s.object, fields)
        })
        .map(|(_, s)| s.object.clone())
        .collect();
    let (rv, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match token
            .split_once(':')
            .and_then(|(rv, at)| Some((rv.parse::<u64>().ok()?, at.parse::<usize>().ok()?)))
        {
            Some((rv, _)) if rv < store.compacted => {
                return error(410, "the continue token has expired; list again");
            }
            Some(t) => t,
            None => return error(400, format!("malformed continue token {token:?}")),
        },
        None => (store.rv, 0),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let next = offset.saturating_add(page.len());
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if next < total {
        metadata["continue"] = json!(format!("{rv}:{next}"));
        metadata["remainingItemCount"] = json!(total - next);
    }
    ok(
        StatusCode::OK,
        &json!({
            "apiVersion": target.resource.api_version(),
            "kind": format!("{}List", target.resource.kind),
            "metadata": metadata,
            "items": page,
        }),
    )
}

fn replace(shared: &Shared, target: &Target, name: &str, object: Value, manager: &str) -> Response {
    let r = target.resource;
    let key = Key::new(r, target.namespace.as_deref(), name);
    let mut store = shared.store.lock().unwrap();
    let Some(stored) = store.objects.get(&key) else {
        return error(404, format!("{} {name:?} not found", r.plural));
    };
    let what = format!("{} {name:?}", r.plural);
    if let Err((code, m)) = strict::precondition(&stored.object, &object, &what) {
        return error(code, m);
    }
    let old = stored.object.clone();
    let writer = patch::writer_of(r, manager, Operation::Update, target.status);
    let base = super::managed_fields::base_for_update(&old, &object, target.status);
    let next =
        patch::only_what_the_endpoint_changes(&old, object, target.status, r.status_subresource);
    let next = match patch::finish_update(r, &old, next, base, &writer) {
        Ok(next) => next,
        Err((code, m)) => return error(code, m),
    };
    store_write(shared, &mut store, &key, next)
}

/// Stores `next` (unless it changes nothing), tells the watches, answers with the object.
fn store_write(
    shared: &Shared,
    store: &mut super::store::Store,
    key: &Key,
    next: Value,
) -> Response {
    let change = store.write(key, next);
    let out = match &change {
        Some(c) => c.object.clone(),
        None => store.objects[key].object.clone(),
    };
    if let Some(c) = change {
        let _ = shared.changes.send(c);
    }
    ok(StatusCode::OK, &out)
}

fn patch(
    shared: &Shared,
    target: &Target,
    name: &str,
    kind: &PatchKind,
    body: &Value,
    manager: &str,
) -> Response {
    let r = target.resource;
    let key = Key::new(r, target.namespace.as_deref(), name);
    let mut store = shared.store.lock().unwrap();
    let Some(stored) = store.objects.get(&key) else {
        return error(404, format!("{} {name:?} not found", r.plural));
    };
    let what = format!("{} {name:?}", r.plural);
    if !matches!(kind, PatchKind::Json)
        && let Err((code, m)) = strict::precondition(&stored.object, body, &what)
    {
        return error(code, m);
    }
    let old = stored.object.clone();
    let operation = match kind {
        PatchKind::Apply { .. } => Operation::Apply,
        _ => Operation::Update,
    };
    let writer = patch::writer_of(r, manager, operation, target.status);
    let next = apply_patch(kind, &old, body, &writer, r).and_then(|(next, managed)| match kind {
        PatchKind::Apply { .. } => patch::finish_apply(r, &old, next, managed),
        _ => patch::finish_update(r, &old, next, managed, &writer),
    });
    match next {
        Ok(next) => store_write(shared, &mut store, &key, next),
        Err((code, m)) => error(code, m),
    }
}

fn line(type_: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch_stream(shared: Arc<Shared>, target: Target, query: &HashMap<String, String>) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let compacted = shared.store.lock().unwrap().compacted;
    if since != 0 && since < compacted {
        let gone = strict::gone(since, compacted);
        let mut v = serde_json::to_vec(&gone).unwrap();
        v.push(b'\n');
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v))
            .unwrap();
    }
    let bookmark_every = shared.bookmark_every;
    let labels = query.get("labelSelector").cloned();
    let fields = query.get("fieldSelector").cloned();
    let matches = move |target: &Target, c: &Change| {
        in_scope(target, &c.key)
            && labels_match(&c.object, labels.as_deref())
            && fields_match(&c.object, fields.as_deref())
    };
    // Subscribe before the snapshot: nothing falls between the two.
    let mut rx = shared.changes.subscribe();
    let (backlog, snapshot) = {
        let store = shared.store.lock().unwrap();
        let backlog: Vec<Bytes> = if since == 0 {
            store
                .objects
                .iter()
                .filter(|(k, s)| {
                    matches(
                        &target,
                        &Change {
                            rv: 0,
                            key: (*k).clone(),
                            type_: "ADDED",
                            object: s.object.clone(),
                        },
                    )
                })
                .map(|(_, s)| line("ADDED", &s.object))
                .collect()
        } else {
            store
                .log
                .iter()
                .filter(|c| c.rv > since && matches(&target, c))
                .map(|c| line(c.type_, &c.object))
                .collect()
        };
        (backlog, store.rv)
    };
    let live = async_stream(move |tx| async move {
        // The version this stream is up to: every change up to it was sent or did not match.
        let mut upto = snapshot;
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Ok(c) if c.rv > snapshot => {
                        upto = upto.max(c.rv);
                        if matches(&target, &c) && tx.send(line(c.type_, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A slow watcher: end the stream, the client watches again from its last
                    // version.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let mut v = serde_json::to_vec(&strict::bookmark(target.resource, upto)).unwrap();
                    v.push(b'\n');
                    if tx.send(Bytes::from(v)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut outage = shared.outage.subscribe();
    let end = async move {
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {}
            _ = outage.wait_for(|down| *down) => {}
        }
    };
    let stream = futures::stream::iter(backlog)
        .chain(live)
        .take_until(end)
        .map(Ok::<Bytes, std::convert::Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A stream fed by a task through a small channel (no extra dependency for generators).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Bytes>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}
