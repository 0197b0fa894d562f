//! OpenAI-style routes served by a model's own server (`server` models): `POST
//! /v1/chat/completions`, `/v1/completions` and the others below pass through to the server
//! of the body's `model`, switching to it first when it is not loaded (trigger `auto`), as
//! every inference route does. Streams (`stream: true`) pass chunk by chunk, unbuffered; a
//! client that leaves closes the upstream connection, which cancels the request there. The
//! model stays loaded while a request is in flight on it (a switch waits, up to the drain
//! timeout, then ends the streams left). `GET /v1/models/{name}/logs` reads what the server
//! printed.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, Uri, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use vramkeeper_crds::api::{ServerLogLine, ServerLogsResponse};

use super::{
    ApiJson, completions,
    route::{AuthClass, GPU, Operation, Route},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
    device::Device,
    worker::server_logs::{log_file, read_log},
};

/// The OpenAI-style paths passed through to a model server (beside `/v1/embeddings`, which
/// also serves the agent's own embedding models).
const PASSED_THROUGH: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/rerank",
    "/v1/score",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/audio/speech",
];

/// Headers of the client's request that reach the server (never its credentials).
const REQUEST_HEADERS: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::ACCEPT];
/// Headers of the server's answer that reach the client.
const RESPONSE_HEADERS: [header::HeaderName; 2] = [header::CONTENT_TYPE, header::CACHE_CONTROL];

pub(super) fn routes() -> Vec<Route> {
    let mut routes: Vec<Route> = PASSED_THROUGH
        .iter()
        .map(|path| {
            Route::post(
                path,
                pass_through,
                AuthClass::Inference,
                Operation::passed_through(
                    "OpenAI-style request, passed through to the server of the body's `model` \
                     (server models); switches to it first if needed. `stream: true` answers \
                     server-sent events as the server sends them.",
                )
                .query(&[GPU])
                .errors(PASS_THROUGH_ERRORS),
            )
        })
        .collect();
    routes.push(Route::get(
        "/v1/models/{name}/logs",
        logs,
        AuthClass::Read,
        Operation::json::<ServerLogsResponse>(
            "What a server model's process printed (stdout and stderr), its last 2000 lines.",
        )
        .errors(&[404, 422]),
    ));
    routes
}

/// Leases tried when a server fails a request because it just died.
const ATTEMPTS: u32 = 2;
/// How long to wait for the worker of a server that failed a request to be seen gone.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// Passing through may also find the server failing (502) or silent (504).
const PASS_THROUGH_ERRORS: &[u16] = &[404, 409, 502, 503, 504];

/// `?gpu=`: the device, when the model is not already loaded on one. Other parameters are the
/// server's business (and not passed on).
#[derive(Deserialize, Default)]
pub(super) struct DeviceQuery {
    gpu: Option<u32>,
}

/// The client for model servers: loopback only, no proxy, no overall timeout (streams last
/// as long as they last; the time to the answer's headers is bounded per request).
static UPSTREAM: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .expect("the upstream client builds")
});

async fn pass_through(
    State(app): State<Arc<App>>,
    query: std::result::Result<Query<DeviceQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response> {
    let Query(query) = query?;
    let model = model_of(&body)?;
    let device = device_for(&app, &model, query.gpu)?;
    let spec = device.spec(&model)?;
    if spec.kind.capabilities().completions.is_some()
        && let Some(flavor) = completions::Flavor::of(uri.path())
    {
        return completions::generate(device, &model, flavor, body).await;
    }
    if !spec.kind.capabilities().openai {
        return Err(ApiError::Invalid(format!(
            "{model} is a {} model, which has no server of its own to pass {} to; /v1/models \
             lists what each model serves",
            spec.kind.name(),
            uri.path()
        )));
    }
    forward(&app, device, &model, uri.path(), &headers, &body).await
}

/// The body's `model`, or a 422 saying it is missing.
pub(super) fn model_of(body: &Value) -> Result<String> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(_) => Err(ApiError::Invalid(
            "invalid request: model must be a non-empty string".into(),
        )),
        None if !body.is_object() => Err(ApiError::Invalid(
            "invalid request: the body must be a JSON object".into(),
        )),
        None => Err(ApiError::Invalid(
            "invalid request: missing field `model`".into(),
        )),
    }
}

/// The device the model is loaded on, else the one asked for (`?gpu=`, default 0).
pub(super) fn device_for<'a>(
    app: &'a App,
    model: &str,
    gpu: Option<u32>,
) -> Result<&'a Arc<Device>> {
    if gpu.is_none()
        && let Some(device) = app
            .devices
            .iter()
            .find(|d| d.active_model().as_deref() == Some(model))
    {
        return Ok(device);
    }
    app.device(gpu.unwrap_or(0))
}

/// Passes `body` to `path` on the model's server and its answer back.
pub(super) async fn forward(
    app: &App,
    device: &Arc<Device>,
    model: &str,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Response> {
    let spec = device.spec(model)?;
    device.fits(&spec)?;
    let timeout = app.devices[0].ctx().config.infer_timeout;
    let mut attempt = 1;
    let (lease, answer) = loop {
        let lease = device.lease(model).await?;
        let url = format!("http://127.0.0.1:{}{path}", lease.port);
        let mut request = UPSTREAM.post(&url).json(body);
        for name in REQUEST_HEADERS {
            if let Some(value) = headers.get(&name) {
                request = request.header(&name, value);
            }
        }
        let detail = match tokio::time::timeout(timeout, request.send()).await {
            Ok(Ok(answer)) => break (lease, answer),
            Ok(Err(e)) => {
                // A server that just died (its worker's exit not yet seen, or the request cut
                // by its death): once its worker is known gone, the next lease starts it again,
                // as a burn worker that died between its load and a request is replaced.
                let active = lease.active().clone();
                device.served(&active, model, false);
                drop(lease);
                let gone = tokio::time::timeout(EXIT_WAIT, active.worker.exited())
                    .await
                    .is_ok();
                if gone && attempt < ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                if e.is_connect() {
                    "refused the connection (it may have exited)".to_string()
                } else {
                    format!("failed: {e}")
                }
            }
            Err(_) => {
                device.served(lease.active(), model, false);
                return Err(ApiError::Upstream {
                    model: model.to_string(),
                    detail: format!("did not answer within {:.0} s", timeout.as_secs_f64()),
                    timed_out: true,
                });
            }
        };
        return Err(ApiError::Upstream {
            model: model.to_string(),
            detail,
            timed_out: false,
        });
    };
    let status = answer.status();
    device.served(lease.active(), model, !status.is_server_error());
    let mut response = Response::builder().status(status.as_u16());
    for name in RESPONSE_HEADERS {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(&name, value);
        }
    }
    response = response.header("x-vramkeeper-model", model);
    if let Some(switch) = lease.switched() {
        let from = switch.from.as_deref().unwrap_or("none");
        if let Ok(value) = HeaderValue::from_str(&format!("{from} -> {}", switch.to)) {
            response = response.header("x-vramkeeper-switched", value);
        }
    }
    let drain = lease.active().drain.subscribe();
    // The lease lives as long as the body: the model stays loaded until the last chunk, the
    // client's departure (the body is dropped, which closes the upstream connection), or the
    // drain timeout of a switch.
    let state = Some((answer.bytes_stream(), lease, drain, model.to_string()));
    let body = futures::stream::unfold(state, |state| async move {
        let (mut upstream, lease, mut drain, model) = state?;
        let next = tokio::select! {
            chunk = upstream.next() => chunk,
            _ = drain.wait_for(|ending| *ending) => {
                tracing::info!(model, "a stream ended: its model is being unloaded");
                return None;
            }
        };
        match next {
            Some(Ok(bytes)) => Some((Ok(bytes), Some((upstream, lease, drain, model)))),
            Some(Err(e)) => {
                tracing::warn!(model, error = %e, "the model server's answer broke off");
                let e = std::io::Error::other(format!(
                    "the server of {model} broke off its answer: {e}"
                ));
                Some((Err::<Bytes, _>(e), None))
            }
            None => None,
        }
    });
    response
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("cannot build the answer: {e}")))
}

async fn logs(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Response> {
    let device = &app.devices[0];
    let spec = device.spec(&name)?;
    if !spec.kind.capabilities().openai {
        return Err(ApiError::Invalid(format!(
            "{name} is a {} model: it runs no server of its own, so it has no server log",
            spec.kind.name()
        )));
    }
    let file = log_file(&device.ctx().launch.log_dir(), &name);
    let (lines, dropped) = read_log(&file).unwrap_or_default();
    Ok(ApiJson(ServerLogsResponse {
        model: name,
        lines: lines
            .into_iter()
            .map(|l| ServerLogLine {
                stream: l.stream.as_str().to_string(),
                text: l.text,
            })
            .collect(),
        dropped,
    })
    .into_response())
}
