//! Property tests (fuzzing that needs no nightly): arbitrary input through the routes' own JSON
//! extractor for every request body, and through the worker protocol's decoder.
//!
//! - Bodies: nothing panics; a body is accepted exactly when serde accepts it for the route's
//!   type (and fits the limit), and every rejection is a 400, 413, 415 or 422 with the JSON
//!   error body.
//! - Frames: nothing panics, every failure is a [`FrameError`], and no read allocates more than
//!   [`MAX_FRAME`] whatever the length prefix claims.
//!
//! Bounded case counts keep this to a few seconds.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fmt::Debug,
};

use axum::{
    Router,
    body::Body,
    extract::DefaultBodyLimit,
    http::{Request, StatusCode, header::CONTENT_TYPE},
    routing::post,
};
use proptest::{prelude::*, test_runner::TestCaseError};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tower::ServiceExt;
use vramkeeper_crds::{
    api::{
        ErrorBody, ErrorCode, InferRequest, RemediateRequest, SwitchRequest, TestLoadRequest,
        UnloadRequest,
    },
    openai::EmbeddingRequest,
};
use vramkeeper_node_agent::fuzzing::{
    ApiJson, BODY_LIMIT, Catalog, Finish, Outcome, Prompt, Sampling,
    protocol::{self, FrameError, MAX_FRAME, WorkerMemory},
};

const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Request bodies

/// The route paths of the test router, one per request body type.
const ROUTES: &[&str] = &[
    "/switch",
    "/unload",
    "/test-load",
    "/remediate",
    "/infer",
    "/embeddings",
];

/// Field names of the request types, so generated objects reach past the first missing field.
const FIELDS: &[&str] = &[
    "model",
    "gpu",
    "trigger",
    "models",
    "tokens",
    "input",
    "encoding_format",
    "dimensions",
    "user",
];

/// Values those fields take, so that some generated bodies are valid.
const WORDS: &[&str] = &[
    "tiny-a",
    "api",
    "spec",
    "auto",
    "operator",
    "test-load",
    "float",
    "base64",
    "",
    "\u{0}",
    "é",
    "🦀",
];

/// Each request type behind the agent's own extractor and body limit, echoing what it read.
fn router() -> Router {
    Router::new()
        .route("/switch", post(echo::<SwitchRequest>))
        .route("/unload", post(echo::<UnloadRequest>))
        .route("/test-load", post(echo::<TestLoadRequest>))
        .route("/remediate", post(echo::<RemediateRequest>))
        .route("/infer", post(echo::<InferRequest>))
        .route("/embeddings", post(echo::<EmbeddingRequest>))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

async fn echo<T: Serialize>(ApiJson(body): ApiJson<T>) -> ApiJson<T> {
    ApiJson(body)
}

/// What serde alone makes of a body for a route: `Some(normalised JSON)` when it accepts it.
fn serde_verdict(route: &str, bytes: &[u8]) -> Option<Value> {
    fn parse<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Option<Value> {
        serde_json::from_slice::<T>(bytes)
            .ok()
            .map(|v| serde_json::to_value(v).expect("request types serialize"))
    }
    match route {
        "/switch" => parse::<SwitchRequest>(bytes),
        "/unload" => parse::<UnloadRequest>(bytes),
        "/test-load" => parse::<TestLoadRequest>(bytes),
        "/remediate" => parse::<RemediateRequest>(bytes),
        "/infer" => parse::<InferRequest>(bytes),
        "/embeddings" => parse::<EmbeddingRequest>(bytes),
        other => unreachable!("no route {other}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Sends one body through the router and checks the answer against serde's verdict.
fn check_body(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    route: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> Result<(), TestCaseError> {
    let mut request = Request::post(route);
    if let Some(ct) = content_type {
        request = request.header(CONTENT_TYPE, ct);
    }
    let request = request.body(Body::from(bytes.clone())).expect("a request");
    let (status, answer) = rt.block_on(async {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the answer's body");
        (status, body)
    });
    let json_type = content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        essence == "application/json" || essence.ends_with("+json")
    });
    // An empty body, untyped or typed JSON, reads as `{}`.
    if bytes.is_empty() && (json_type || content_type.is_none()) {
        let verdict = serde_verdict(route, b"{}");
        prop_assert_eq!(
            status == StatusCode::OK,
            verdict.is_some(),
            "empty body: {}",
            status
        );
        if verdict.is_none() {
            prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        }
        return Ok(());
    }
    let verdict = serde_verdict(route, &bytes);
    if status == StatusCode::OK {
        let echoed: Value = serde_json::from_slice(&answer).expect("200 answers are JSON");
        prop_assert!(json_type, "accepted without a JSON content type");
        prop_assert_eq!(Some(echoed), verdict, "the extractor and serde disagree");
        return Ok(());
    }
    let error: ErrorBody = serde_json::from_slice(&answer)
        .map_err(|e| TestCaseError::fail(format!("{status}: not an error body ({e})")))?;
    prop_assert!(verdict.is_none() || !json_type || bytes.len() > BODY_LIMIT);
    let expected: &[StatusCode] = if !json_type {
        &[StatusCode::UNSUPPORTED_MEDIA_TYPE]
    } else if bytes.len() > BODY_LIMIT {
        &[StatusCode::PAYLOAD_TOO_LARGE]
    } else if std::str::from_utf8(&bytes).is_err()
        || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
    {
        // Not JSON at all is 400, whatever serde met first.
        &[StatusCode::BAD_REQUEST]
    } else {
        &[StatusCode::UNPROCESSABLE_ENTITY]
    };
    prop_assert!(
        expected.contains(&status),
        "{} for {:?}: {:?}",
        status,
        expected,
        error
    );
    // A bad body is the client's fault, named as such.
    prop_assert!(
        !matches!(
            error.error.code,
            ErrorCode::Internal | ErrorCode::Unrecognized
        ) && !error.error.message.is_empty(),
        "{:?}",
        error
    );
    Ok(())
}

/// Any JSON value, with the request types' field names and values among the choices.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u32..600).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// An object with each request field present or not, of a plausible or an arbitrary value.
fn shaped_body() -> impl Strategy<Value = Value> {
    let field_value = prop_oneof![
        2 => prop::sample::select(WORDS).prop_map(Value::from),
        2 => (0u32..3).prop_map(Value::from),
        1 => prop::collection::vec(0u32..600, 0..70).prop_map(|v| json!(v)),
        1 => prop::collection::vec(prop::sample::select(WORDS), 0..4).prop_map(|v| json!(v)),
        1 => json_value(),
    ];
    prop::collection::btree_map(prop::sample::select(FIELDS), field_value, 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/merge-patch+json")),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(None),
    ]
}

/// A valid-looking body with a few bytes flipped, dropped or inserted.
fn mutated_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        shaped_body(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(body, edits)| {
            let mut bytes = serde_json::to_vec(&body).expect("JSON");
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, byte),
                }
            }
            bytes
        })
}

#[test]
fn arbitrary_json_values_map_to_success_or_a_client_error() {
    let (rt, app) = (runtime(), router());
    proptest!(ProptestConfig::with_cases(CASES), |(
        route in prop::sample::select(ROUTES),
        body in prop_oneof![json_value(), shaped_body()],
        ct in content_type(),
    )| {
        check_body(&rt, &app, route, ct, serde_json::to_vec(&body).unwrap())?;
    });
}

#[test]
fn arbitrary_bytes_map_to_success_or_a_client_error() {
    let (rt, app) = (runtime(), router());
    proptest!(ProptestConfig::with_cases(CASES), |(
        route in prop::sample::select(ROUTES),
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), mutated_bytes()],
        ct in content_type(),
    )| {
        check_body(&rt, &app, route, ct, bytes)?;
    });
}

#[test]
fn bodies_at_and_over_the_limit() {
    let (rt, app) = (runtime(), router());
    for route in ROUTES {
        // Exactly the limit: read in full (the values decide); one byte more: 413.
        let prefix = br#"{"model": ""#;
        let suffix = br#""}"#;
        let mut at_limit = prefix.to_vec();
        at_limit.resize(BODY_LIMIT - suffix.len(), b'x');
        at_limit.extend_from_slice(suffix);
        assert_eq!(at_limit.len(), BODY_LIMIT);
        check_body(&rt, &app, route, Some("application/json"), at_limit.clone()).unwrap();
        let mut over = at_limit;
        over.insert(prefix.len(), b'x');
        check_body(&rt, &app, route, Some("application/json"), over).unwrap();
        let huge = vec![b'['; 4 * BODY_LIMIT];
        check_body(&rt, &app, route, Some("application/json"), huge).unwrap();
        // Deep nesting is refused by serde's recursion limit, not by a stack overflow.
        let deep = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
        check_body(&rt, &app, route, Some("application/json"), deep).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Worker protocol

/// Records the largest single allocation of the current thread while asked to.
struct Tracking;

thread_local! {
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if let Some(m) = l.get() {
            l.set(Some(m.max(size)));
        }
    });
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are noted.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f`, returning its result and the largest allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
    (out, largest)
}

/// Valid frames of every message kind, to mutate.
fn seed_frames() -> Vec<Vec<u8>> {
    use protocol::{Request as Rq, Response as Rs};
    let mut frames: Vec<Vec<u8>> = Catalog::builtin()
        .models()
        .iter()
        .map(|spec| protocol::encode(&Rq::Load { spec: spec.clone() }))
        .collect();
    let requests = [
        Rq::Hello,
        Rq::Infer {
            tokens: vec![1, 2, 3],
        },
        Rq::Embed {
            texts: vec!["a".into(), "é🦀".into()],
        },
        Rq::Generate {
            prompt: Prompt::Chat {
                messages: vec![serde_json::json!({"role": "user", "content": "hi"})],
            },
            sampling: Sampling {
                temperature: 0.7,
                top_p: 0.9,
                seed: Some(1),
                max_tokens: Some(8),
                stop: vec!["\n".into()],
            },
        },
        Rq::Cancel,
        Rq::Memory,
        Rq::Cleanup,
        Rq::Leak {
            mib: 4,
            pooled: true,
        },
        Rq::Hang,
        Rq::Shutdown,
    ];
    frames.extend(requests.iter().map(protocol::encode));
    let responses = [
        Rs::Hello {
            pid: 7,
            instance: "i".into(),
            backend: "flex".into(),
        },
        Rs::Loaded {
            params: 1,
            param_bytes: 4,
            context_ms: 0.5,
            weights_ms: 1.0,
            warmup_ms: 2.0,
            read_bytes: 4,
            port: Some(8000),
            working_bytes: Some(1 << 20),
        },
        Rs::Piece {
            text: "é🦀".into()
        },
        Rs::Generated(Outcome {
            prompt_tokens: 3,
            completion_tokens: 2,
            finish: Finish::Length,
        }),
        Rs::Rejected {
            message: "too long".into(),
        },
        Rs::Inferred {
            next_tokens: vec![1],
            checksum: -1.5,
            compute_ms: 0.1,
        },
        Rs::Embedded {
            vectors: protocol::encode_f32([1.0f32, 2.0].into_iter()),
            dim: 2,
            tokens: vec![3],
        },
        Rs::Memory(WorkerMemory::default()),
        Rs::Cleaned {
            reserved_before: 2,
            reserved_after: 1,
        },
        Rs::Ok,
        Rs::Error {
            message: "no".into(),
            fatal: false,
        },
    ];
    frames.extend(responses.iter().map(protocol::encode));
    frames
}

/// A byte stream: arbitrary bytes, a claimed length with a short body, or mutated real frames.
fn frame_stream() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seed_frames();
    let mutated = (
        prop::collection::vec(prop::sample::select(seeds), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..6),
    )
        .prop_map(|(frames, edits)| {
            let mut bytes = frames.concat();
            for (at, byte, how) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => {
                        bytes.remove(i);
                    }
                    2 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        });
    let claimed = (
        prop_oneof![
            any::<u32>(),
            (MAX_FRAME as u32 - 2)..=(MAX_FRAME as u32 + 2),
            Just(u32::MAX),
            0u32..64,
        ],
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(len, body)| [len.to_be_bytes().to_vec(), body].concat());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        claimed,
        mutated,
    ]
}

/// Reads frames until the stream fails; every failure must be a [`FrameError`].
fn drain<T: DeserializeOwned + Debug>(mut bytes: &[u8]) -> Result<usize, TestCaseError> {
    let mut frames = 0;
    loop {
        match protocol::read_frame::<T>(&mut bytes) {
            Ok(_) => frames += 1,
            Err(FrameError::Closed) => return Ok(frames),
            Err(FrameError::TooLarge(n)) => {
                prop_assert!(n > MAX_FRAME);
                return Ok(frames);
            }
            Err(FrameError::Malformed(_) | FrameError::Io(_)) => return Ok(frames),
        }
    }
}

#[test]
fn arbitrary_byte_streams_never_panic_or_overallocate() {
    proptest!(ProptestConfig::with_cases(CASES), |(bytes in frame_stream())| {
        let (read, largest) = largest_allocation(|| {
            let a = drain::<protocol::Request>(&bytes);
            let b = drain::<protocol::Response>(&bytes);
            a.and(b)
        });
        read?;
        prop_assert!(largest <= MAX_FRAME, "{largest} bytes allocated for one read");
    });
}

#[test]
fn arbitrary_bodies_decode_or_fail_cleanly() {
    proptest!(ProptestConfig::with_cases(CASES), |(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            frame_stream().prop_map(|f| f.get(4..).map(<[u8]>::to_vec).unwrap_or_default()),
        ],
    )| {
        // decode is all the agent's async reader does after frame_len. What it accepts is a
        // message the other side could have sent (encoding it gives a frame that decodes to
        // the same kind of message); what it refuses, it refuses with a reason. (Floats may
        // move in their last bit through JSON: the variant is compared, not the values.)
        fn check<T>(body: &[u8]) -> Result<(), TestCaseError>
        where
            T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
        {
            match protocol::decode::<T>(body) {
                Ok(message) => {
                    let again = protocol::encode(&message);
                    let back = protocol::decode::<T>(&again[4..])
                        .map_err(|e| TestCaseError::fail(format!("re-encoded {message:?}: {e}")))?;
                    prop_assert_eq!(
                        std::mem::discriminant(&back),
                        std::mem::discriminant(&message)
                    );
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            Ok(())
        }
        check::<protocol::Request>(&body)?;
        check::<protocol::Response>(&body)?;
    });
}

#[test]
fn length_prefixes_are_bounded() {
    proptest!(ProptestConfig::with_cases(CASES), |(
        len in prop_oneof![any::<u32>(), (MAX_FRAME as u32 - 2)..=(MAX_FRAME as u32 + 2)],
    )| {
        match protocol::frame_len(len.to_be_bytes()) {
            Ok(n) => prop_assert!(n == len as usize && n <= MAX_FRAME),
            Err(FrameError::TooLarge(n)) => prop_assert!(n == len as usize && n > MAX_FRAME),
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    });
}

#[test]
fn every_seed_frame_is_valid() {
    for frame in seed_frames() {
        let mut r = frame.as_slice();
        let ok = protocol::read_frame::<protocol::Request>(&mut r).is_ok()
            || protocol::read_frame::<protocol::Response>(&mut frame.as_slice()).is_ok();
        assert!(ok, "{}", String::from_utf8_lossy(&frame));
    }
}
