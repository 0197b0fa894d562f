//! Who may call what: the secrets the agent is configured with, the rate limit of each
//! credential, and the host names it answers for. The HTTP middleware that applies them is
//! in `api::auth` and `api::host`; each route's class is declared in the route table.
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

pub(crate) mod host;
pub(crate) mod token_source;

use std::num::NonZeroU32;

use anyhow::Context;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use subtle::ConstantTimeEq;

use self::{
    host::HostPolicy,
    token_source::{TokenFile, TokenSource},
};
use crate::args::ServeArgs;

/// A secret that does not print.
#[derive(Clone)]
pub(crate) struct Token(String);

impl Token {
    /// Wraps a secret, trimmed as presented ones are; `None` when nothing is left.
    pub(crate) fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self(secret.to_string()))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub(crate) fn matches(&self, presented: &str) -> bool {
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
pub(crate) fn configured_token(args: &ServeArgs) -> anyhow::Result<Option<TokenSource>> {
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
pub(crate) struct Access {
    keys: Vec<Token>,
    inference_without_auth: bool,
    inference_limiter: DefaultKeyedRateLimiter<usize>,
    /// Which `Host` headers are answered.
    pub hosts: HostPolicy,
}

impl Access {
    /// From the arguments: checks every key and host name.
    pub(crate) fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
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
    pub(crate) fn inference_needs_auth(&self, has_token: bool) -> bool {
        !self.inference_without_auth && (has_token || !self.keys.is_empty())
    }

    /// Which credential `presented` is: 0 the token (when one is configured), `i + 1` key `i`.
    pub(crate) fn credential(&self, token: Option<&TokenSource>, presented: &str) -> Option<usize> {
        let current = token.map(TokenSource::current);
        let mut found = None;
        // Every secret is compared, so that the time taken does not say which one matched.
        for (i, secret) in current.iter().chain(&self.keys).enumerate() {
            if secret.matches(presented) && found.is_none() {
                let index = if token.is_some() { i } else { i + 1 };
                found = Some(index);
            }
        }
        found
    }

    /// Counts an inference request of `credential`: Ok, or the seconds to wait (rounded up).
    pub(crate) fn check_inference_rate(&self, credential: usize) -> Result<(), u64> {
        self.inference_limiter
            .check_key(&credential)
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                wait.as_secs() + 1
            })
    }
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
