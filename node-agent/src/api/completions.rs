//! Completions by the agent's own decoders (`hf` models): `POST /v1/chat/completions` and
//! `POST /v1/completions` for a model that generates ([`crate::models::kind::Completions`])
//! are answered here; for a server model the same routes pass through ([`super::openai`]).
//! The model is switched to first when needed (trigger `auto`). With `stream: true` the
//! answer is server-sent events, a chunk per piece of text; a client that leaves stops the
//! generation at its next token. A prompt that does not fit the context is a 400.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use vramkeeper_crds::{
    api::{ErrorCode, SwitchResponse},
    completions::{
        AnswerMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
        ChunkChoice, CompletionRequest, Delta, MAX_STOP, MessageContent, SamplingFields,
        TextChoice, TextCompletion, Usage,
    },
    openai::MAX_INPUT_CHARS,
};

use super::{ApiJson, json};
use crate::{
    api::error::{ApiError, Result},
    device::{Device, GenEvent},
    models::generate::{Finish, Outcome, Prompt, Sampling},
};

/// Which of the two routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

impl Flavor {
    /// The route of `path`, if it is one of the two.
    pub(super) fn of(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Text),
            _ => None,
        }
    }
}

/// OpenAI's default `max_tokens` for `/v1/completions`.
const TEXT_MAX_TOKENS: u32 = 16;

/// A request, checked.
struct Asked {
    prompt: Prompt,
    sampling: Sampling,
    stream: bool,
    include_usage: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid(format!("invalid request: {}", message.into()))
}

fn sampling(fields: SamplingFields, max_tokens: Option<u32>) -> Result<(Sampling, bool, bool)> {
    let temperature = fields.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(format!(
            "temperature {temperature} is not within 0 to 2"
        )));
    }
    let top_p = fields.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!(
            "top_p {top_p} is not above 0 and at most 1"
        )));
    }
    if let Some(n) = fields.n.filter(|&n| n != 1) {
        return Err(invalid(format!(
            "n = {n}: one choice per request is served"
        )));
    }
    if max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    let stop = fields.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(invalid(format!(
            "stop has {} sequences; at most {MAX_STOP}",
            stop.len()
        )));
    }
    if stop.iter().any(String::is_empty) {
        return Err(invalid("stop sequences must not be empty"));
    }
    if fields.stream_options.is_some() && !fields.stream {
        return Err(invalid("stream_options needs stream: true"));
    }
    let include_usage = fields.stream_options.is_some_and(|o| o.include_usage);
    Ok((
        Sampling {
            temperature,
            top_p,
            seed: fields.seed.map(|s| s as u64),
            max_tokens,
            stop,
        },
        fields.stream,
        include_usage,
    ))
}

fn prompt_chars(n: usize) -> Result<()> {
    if n > MAX_INPUT_CHARS {
        return Err(ApiError::OverLimit {
            what: "characters of prompt",
            limit: MAX_INPUT_CHARS,
            got: n,
        });
    }
    Ok(())
}

fn chat_request(body: Value) -> Result<Asked> {
    let req: ChatCompletionRequest = json::from_value(body)?;
    if req.logprobs == Some(true) {
        return Err(invalid("logprobs are not supported"));
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(invalid("tools are not supported"));
    }
    if req.messages.is_empty() {
        return Err(invalid("messages must hold at least one message"));
    }
    let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (Some(_), Some(_)) => {
            return Err(invalid("set max_tokens or max_completion_tokens, not both"));
        }
        (a, b) => a.or(b),
    };
    let mut chars = 0;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let content = match m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t,
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "messages[{i}].content: a part of type {kind:?} is not \
                                 supported (text parts are)"
                            )));
                        }
                    }
                }
                text
            }
        };
        chars += content.chars().count();
        let mut message = serde_json::json!({"role": m.role, "content": content});
        if let Some(name) = m.name {
            message["name"] = name.into();
        }
        messages.push(message);
    }
    prompt_chars(chars)?;
    let (sampling, stream, include_usage) = sampling(req.sampling, max_tokens)?;
    Ok(Asked {
        prompt: Prompt::Chat { messages },
        sampling,
        stream,
        include_usage,
    })
}

fn text_request(body: Value) -> Result<Asked> {
    let req: CompletionRequest = json::from_value(body)?;
    if req.echo == Some(true) {
        return Err(invalid("echo is not supported"));
    }
    if req.logprobs.is_some() {
        return Err(invalid("logprobs are not supported"));
    }
    if req.suffix.is_some() {
        return Err(invalid("suffix is not supported"));
    }
    let text = match req.prompt.into_vec().as_slice() {
        [one] => one.clone(),
        many => {
            return Err(invalid(format!(
                "prompt holds {} texts; one per request is served",
                many.len()
            )));
        }
    };
    prompt_chars(text.chars().count())?;
    let max_tokens = Some(req.max_tokens.unwrap_or(TEXT_MAX_TOKENS));
    let (sampling, stream, include_usage) = sampling(req.sampling, max_tokens)?;
    Ok(Asked {
        prompt: Prompt::Text { text },
        sampling,
        stream,
        include_usage,
    })
}

/// What every answer of one request shares.
struct Answer {
    flavor: Flavor,
    id: String,
    created: i64,
    model: String,
}

fn usage(o: &Outcome) -> Usage {
    Usage {
        prompt_tokens: o.prompt_tokens,
        completion_tokens: o.completion_tokens,
        total_tokens: o.prompt_tokens + o.completion_tokens,
    }
}

impl Answer {
    fn whole(&self, text: String, outcome: &Outcome) -> Response {
        let finish_reason = outcome.finish.as_str().to_string();
        match self.flavor {
            Flavor::Chat => ApiJson(ChatCompletion {
                id: self.id.clone(),
                object: "chat.completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AnswerMessage {
                        role: "assistant".into(),
                        content: text,
                    },
                    finish_reason,
                }],
                usage: usage(outcome),
            })
            .into_response(),
            Flavor::Text => ApiJson(TextCompletion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![TextChoice {
                    index: 0,
                    text,
                    finish_reason: Some(finish_reason),
                    logprobs: None,
                }],
                usage: Some(usage(outcome)),
            })
            .into_response(),
        }
    }

    /// One chunk: `text` (or the assistant's role first), `finish` in the last.
    fn chunk(&self, delta: Delta, finish: Option<Finish>) -> Bytes {
        self.stream_event(Some((delta, finish)), None)
    }

    /// The last chunk's token counts (`stream_options.include_usage`): no choice.
    fn usage_chunk(&self, outcome: &Outcome) -> Bytes {
        self.stream_event(None, Some(usage(outcome)))
    }

    /// A stream's event in the route's shape, with one choice or none.
    fn stream_event(&self, choice: Option<(Delta, Option<Finish>)>, usage: Option<Usage>) -> Bytes {
        let choice = choice.map(|(delta, finish)| (delta, finish.map(|f| f.as_str().to_string())));
        match self.flavor {
            Flavor::Chat => event(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: choice
                    .map(|(delta, finish_reason)| ChunkChoice {
                        index: 0,
                        delta,
                        finish_reason,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
            Flavor::Text => event(&TextCompletion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: choice
                    .map(|(delta, finish_reason)| TextChoice {
                        index: 0,
                        text: delta.content.unwrap_or_default(),
                        finish_reason,
                        logprobs: None,
                    })
                    .into_iter()
                    .collect(),
                usage,
            }),
        }
    }

    fn piece(&self, text: String) -> Bytes {
        self.chunk(
            Delta {
                role: None,
                content: Some(text),
            },
            None,
        )
    }
}

fn event<T: Serialize>(value: &T) -> Bytes {
    let json = serde_json::to_string(value).expect("answers serialize");
    Bytes::from(format!("data: {json}\n\n"))
}

/// An error after the stream began: an `error` event, and the stream ends without `[DONE]`.
fn error_event(message: &str, code: ErrorCode) -> Bytes {
    event(&serde_json::json!({"error": {"message": message, "code": code}}))
}

/// Serves one completion request with `model` on `device`.
pub(super) async fn generate(
    device: &Arc<Device>,
    model: &str,
    flavor: Flavor,
    body: Value,
) -> Result<Response> {
    let asked = match flavor {
        Flavor::Chat => chat_request(body)?,
        Flavor::Text => text_request(body)?,
    };
    let spec = device.spec(model)?;
    device.fits(&spec)?;
    let mut generation = device.generate(model, asked.prompt, asked.sampling)?;
    let mut switched: Option<SwitchResponse> = None;
    // The answer's status waits for the first piece: a prompt the model refuses is a 400,
    // not a stream that fails.
    let first = loop {
        match generation.events.recv().await {
            Some(GenEvent::Started { switched: s }) => switched = s.map(|s| *s),
            Some(GenEvent::Failed(e)) => return Err(e.into()),
            Some(event) => break event,
            None => {
                return Err(ApiError::Internal(
                    "the generation ended without an answer".into(),
                ));
            }
        }
    };
    let answer = Answer {
        flavor,
        id: format!(
            "{}-{}",
            if flavor == Flavor::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            uuid::Uuid::new_v4().simple()
        ),
        created: jiff::Timestamp::now().as_second(),
        model: model.to_string(),
    };
    let mut response = if asked.stream {
        stream(answer, first, generation, asked.include_usage)?
    } else {
        let mut text = String::new();
        let mut next = Some(first);
        let outcome = loop {
            let event = match next.take() {
                Some(event) => Some(event),
                None => generation.events.recv().await,
            };
            match event {
                Some(GenEvent::Piece(piece)) => text.push_str(&piece),
                Some(GenEvent::Done(outcome)) => break outcome,
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                Some(GenEvent::Started { .. }) => {}
                None => {
                    return Err(ApiError::Internal(
                        "the generation ended without an answer".into(),
                    ));
                }
            }
        };
        if outcome.finish == Finish::Cancelled {
            return Err(ApiError::Unavailable(format!(
                "{model} was unloaded before it finished this completion"
            )));
        }
        answer.whole(text, &outcome)
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert("x-vramkeeper-model", value);
    }
    if let Some(switch) = switched {
        let from = switch.from.as_deref().unwrap_or("none");
        if let Ok(value) = HeaderValue::from_str(&format!("{from} -> {}", switch.to)) {
            headers.insert("x-vramkeeper-switched", value);
        }
    }
    Ok(response)
}

/// The server-sent events of a generation.
fn stream(
    answer: Answer,
    first: GenEvent,
    generation: crate::device::Generation,
    include_usage: bool,
) -> Result<Response> {
    let opening = match answer.flavor {
        Flavor::Chat => Some(answer.chunk(
            Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            None,
        )),
        Flavor::Text => None,
    };
    let state = (answer, Some(first), generation, false);
    let body = futures::stream::unfold(
        state,
        move |(answer, mut first, mut generation, done)| async move {
            if done {
                return None;
            }
            let event = match first.take() {
                Some(event) => Some(event),
                None => generation.events.recv().await,
            };
            let (bytes, done) = match event {
                Some(GenEvent::Piece(text)) => (answer.piece(text), false),
                Some(GenEvent::Done(outcome)) if outcome.finish == Finish::Cancelled => {
                    let message = format!(
                        "{} was unloaded before it finished this completion",
                        answer.model
                    );
                    (error_event(&message, ErrorCode::Unavailable), true)
                }
                Some(GenEvent::Done(outcome)) => {
                    let mut all = answer
                        .chunk(Delta::default(), Some(outcome.finish))
                        .to_vec();
                    if include_usage {
                        all.extend_from_slice(&answer.usage_chunk(&outcome));
                    }
                    all.extend_from_slice(b"data: [DONE]\n\n");
                    (Bytes::from(all), true)
                }
                Some(GenEvent::Failed(e)) => (error_event(&e.to_string(), e.code()), true),
                Some(GenEvent::Started { .. }) => (Bytes::new(), false),
                None => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (answer, first, generation, done),
            ))
        },
    );
    let body = futures::stream::iter(opening.map(Ok)).chain(body);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("cannot build the answer: {e}")))
}
