//! Who may call what.
//!
//! - Acting routes (switch, unload, test-load, free, reset): the token whenever one is
//!   configured; one rate limit for all of them.
//! - Inference routes (`/v1/infer`, `/v1/embeddings`), which load and unload models by naming
//!   them: the token or an inference key (`--api-key`) whenever either is configured, unless
//!   `--inference-without-auth`; a rate limit per credential.
//! - Reads: open, or the token with `--auth-reads`.
//!
//! The token may come from a file, read again when it changes (`token_source`).
//!
//! Secrets are compared in constant time, trimmed on both sides (what is configured and what
//! is presented), and never logged. An empty or whitespace-only secret refuses to start: it
//! could never match, and would look like protection.

use std::{num::NonZeroU32, sync::Arc};

use anyhow::Context;
use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use subtle::ConstantTimeEq;

use super::{
    host::HostPolicy,
    token_source::{TokenFile, TokenSource},
};
use crate::{app::App, args::ServeArgs, error::ApiError};

/// A secret that does not print.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a secret, trimmed as presented ones are; `None` when nothing is left.
    pub fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self(secret.to_string()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.trim().as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn secret(raw: &str, what: &str) -> anyhow::Result<Token> {
    Token::new(raw).with_context(|| {
        format!(
            "{what} is empty or only whitespace: refusing to start, since no request could \
             ever present it; give a real secret or leave it unset"
        )
    })
}

/// The token of `--token` or `--token-file` (followed as the file changes), checked.
pub fn configured_token(args: &ServeArgs) -> anyhow::Result<Option<TokenSource>> {
    match (&args.token, &args.token_file) {
        (Some(t), _) => secret(t, "--token (VRAMKEEPER_TOKEN)")
            .map(TokenSource::Fixed)
            .map(Some),
        (None, Some(path)) => TokenFile::open(path).map(TokenSource::File).map(Some),
        (None, None) => Ok(None),
    }
}

/// Everything about access beyond the token: inference keys and their limits, the host names
/// the agent answers for.
pub struct Access {
    keys: Vec<Token>,
    inference_without_auth: bool,
    inference_limiter: DefaultKeyedRateLimiter<usize>,
    /// Which `Host` headers are answered.
    pub hosts: HostPolicy,
}

impl Access {
    /// From the arguments: checks every key and host name.
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        let keys = args
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| secret(k, &format!("--api-key number {}", i + 1)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if args.inference_without_auth {
            tracing::warn!(
                "--inference-without-auth: anyone who reaches this agent can unload and load \
                 models through the inference routes"
            );
        }
        let per_second = NonZeroU32::new(args.inference_rate_limit).with_context(|| {
            "--inference-rate-limit must be at least 1 request a second".to_string()
        })?;
        Ok(Self {
            keys,
            inference_without_auth: args.inference_without_auth,
            inference_limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            hosts: HostPolicy::new(args.node_name.as_deref(), &args.allowed_hosts)?,
        })
    }

    /// Whether inference needs a credential.
    pub fn inference_needs_auth(&self, has_token: bool) -> bool {
        !self.inference_without_auth && (has_token || !self.keys.is_empty())
    }
}

fn presented(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn authorized(app: &App, request: &Request) -> bool {
    let Some(source) = &app.token else {
        return true;
    };
    let token = source.current();
    presented(request).is_some_and(|p| token.matches(p))
}

/// Which credential a request presents: 0 the token, `i + 1` key `i`.
fn credential(app: &App, request: &Request) -> Option<usize> {
    let presented = presented(request)?;
    let token = app.token.as_ref().map(TokenSource::current);
    let mut found = None;
    // Every secret is compared, so that the time taken does not say which one matched.
    for (i, secret) in token.iter().chain(&app.access.keys).enumerate() {
        if secret.matches(presented) && found.is_none() {
            let index = if app.token.is_some() { i } else { i + 1 };
            found = Some(index);
        }
    }
    found
}

/// Acting routes: the token when one is configured, and the rate limit.
pub async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    if let Err(retry_after_s) = app.acting_limiter.check() {
        return ApiError::RateLimited {
            what: "requests to acting routes",
            retry_after_s,
        }
        .into_response();
    }
    next.run(request).await
}

/// Inference routes: the token or a key when either is configured (and not waived), each
/// credential rate limited on its own.
pub async fn require_credential_for_inference(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if !app.access.inference_needs_auth(app.token.is_some()) {
        return next.run(request).await;
    }
    let Some(credential) = credential(&app, &request) else {
        return ApiError::UnauthorizedInference.into_response();
    };
    if let Err(not_until) = app.access.inference_limiter.check_key(&credential) {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        return ApiError::RateLimited {
            what: "inference requests with this credential",
            retry_after_s: wait.as_secs() + 1,
        }
        .into_response();
    }
    next.run(request).await
}

/// Read routes: the token only with `--auth-reads`.
pub async fn require_token_for_reads(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if app.auth_reads && !authorized(&app, &request) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_trimmed_and_never_print() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.matches("s3cret"));
        assert!(t.matches(" s3cret\n"), "presented ones are trimmed");
        assert!(!t.matches("s3cres"));
        assert!(!t.matches("s3cret-longer"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("s3cret"));
        let spaced = Token::new("  s3cret \n").unwrap();
        assert!(spaced.matches("s3cret"), "configured ones are trimmed too");
    }

    #[test]
    fn empty_and_whitespace_secrets_are_refused() {
        assert!(Token::new("").is_none());
        assert!(Token::new(" \t\n").is_none());
        let e = secret("\n", "the token file /x").unwrap_err().to_string();
        assert!(
            e.contains("the token file /x") && e.contains("empty"),
            "{e}"
        );
    }
}
