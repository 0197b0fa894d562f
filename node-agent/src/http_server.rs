//! The HTTP/1.1 server loop: hyper with the limits a node agent needs against slow or idle
//! clients, which `axum::serve` does not set.
//!
//! - Headers must arrive within `header_timeout`; hyper restarts that timer whenever a
//!   keep-alive connection waits for its next request, so it is the idle timeout as well.
//! - A request body must arrive within `body_timeout`.
//! - At most `max_connections` connections are kept. One over the cap is still served (so
//!   `/healthz` always answers), but once, with a short header timeout and no keep-alive.
//! - Shutdown stops accepting, lets in-flight requests finish for `shutdown_timeout`, then
//!   returns regardless, so the agent can end its workers before Kubernetes' SIGKILL.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Limits on clients.
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    /// Time to send a request's headers, and to start the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Connections kept at once.
    pub max_connections: usize,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_timeout: Duration,
}

/// Header timeout of a connection over the cap: it gets one request, quickly.
const OVER_CAP_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `router` until `stop` is cancelled, then drains in-flight requests for at most
/// `limits.shutdown_timeout`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let service = tower::ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(router);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off a moment rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Answers go out as they are written (a streamed body is several writes): without
        // this, the second write of a small answer waits for the client's delayed ACK (~40 ms).
        let _ = stream.set_nodelay(true);
        let permit = open.clone().try_acquire_owned().ok();
        // HTTP/1.1 only: version detection would wait for a first byte with no timeout.
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new());
        match &permit {
            Some(_) => builder.header_read_timeout(limits.header_timeout),
            None => builder
                .header_read_timeout(OVER_CAP_HEADER_TIMEOUT)
                .keep_alive(false),
        };
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                seconds = limits.shutdown_timeout.as_secs_f64(),
                "requests still in flight after the shutdown timeout: stopping regardless"
            );
        }
    }
}
