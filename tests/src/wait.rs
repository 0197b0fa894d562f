//! Waiting on conditions, never on fixed sleeps: tests run on busy 2-core machines.

use std::time::{Duration, Instant};

/// Generous default deadline for conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Polls `check` until it is true, or panics after `deadline` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, deadline, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}
