//! The worker process: listens on its Unix socket and serves one request at a time, all on
//! its main thread. It outlives a connection (an agent that dies leaves it running, holding
//! its memory, as a stale model server would: the restarted agent finds it as an orphan).

use std::{
    os::{
        fd::AsFd,
        unix::net::{UnixListener, UnixStream},
    },
    panic::AssertUnwindSafe,
    time::Duration,
};

use anyhow::Context;

use super::{
    engine::{BurnEngine, Engine},
    protocol::{FrameError, Request, Response, WorkerMemory, read_frame, write_frame},
    server_process::ServerEngine,
};
use crate::{
    args::{Fault, WorkerArgs},
    backend::Cpu,
    models::{
        ModelKind,
        generate::{GenError, Prompt, Sampling},
    },
};

/// Runs a worker until it is told to shut down (or killed).
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let mut engine = engine_for(&args)?;
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    tracing::debug!(socket = %args.socket.display(), backend = engine.backend(), "worker ready");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if serve(stream, &mut engine, &args) == Flow::Exit {
            // A model server ends before its worker does: nothing of the tree outlives it.
            engine.stop();
            let _ = std::fs::remove_file(&args.socket);
            exit_now();
        }
    }
    Ok(())
}

/// Ends the process at once, skipping exit handlers: the CUDA driver's would tear the context
/// down politely first (a tenth of a second); the kernel frees an ended process's device
/// memory anyway, and the agent verifies that it did.
fn exit_now() -> ! {
    #[allow(unsafe_code)]
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe {
        libc::_exit(0)
    }
}

fn engine_for(args: &WorkerArgs) -> anyhow::Result<Box<dyn Engine>> {
    match args.backend.as_str() {
        "flex" => Ok(Box::new(BurnEngine::<Cpu>::new(Default::default(), "flex"))),
        #[cfg(feature = "cuda")]
        "cuda" => {
            configure_cubecl(&args.cache_dir);
            let device = burn::backend::cuda::CudaDevice::new(args.device_index as usize);
            Ok(Box::new(BurnEngine::<crate::backend::Gpu>::new(
                device, "cuda",
            )))
        }
        other => anyhow::bail!("backend {other:?} is not available in this build"),
    }
}

/// Points cubecl's kernel and autotune caches at the agent's cache directory, so a second
/// start of a model does not compile again.
#[cfg(feature = "cuda")]
fn configure_cubecl(cache_dir: &std::path::Path) {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let dir = cache_dir.join("cubecl");
    let mut config = CubeClRuntimeConfig::default();
    config.compilation.cache = Some(CacheConfig::File(dir.clone()));
    config.autotune.cache = CacheConfig::File(dir);
    CubeClRuntimeConfig::set(config);
}

#[derive(PartialEq, Eq)]
enum Flow {
    /// The connection ended; wait for the next.
    Next,
    /// Shut down.
    Exit,
}

/// How long a worker waits, after a request that ran its model, before it returns the
/// allocator's pool to the device: what the request's temporaries took is not the model's
/// between requests (a MiniLM batch of 256 leaves ~320 MiB on an H100 otherwise).
const IDLE_RETURN: Duration = Duration::from_millis(200);

/// Whether the agent sends something within `wait`.
fn request_within(stream: &UnixStream, wait: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    // An error (a signal) counts as activity: the read that follows sorts it out.
    !matches!(poll(&mut fds, timeout), Ok(0))
}

fn serve(mut stream: UnixStream, engine: &mut Box<dyn Engine>, args: &WorkerArgs) -> Flow {
    let mut worked = false;
    loop {
        if worked && !request_within(&stream, IDLE_RETURN) {
            worked = false;
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| engine.idle())) {
                tracing::error!(
                    panic = panic_message(&panic),
                    "returning the pool while idle failed"
                );
                return Flow::Exit;
            }
        }
        let request: Request = match read_frame(&mut stream) {
            Ok(r) => r,
            Err(FrameError::Closed) => return Flow::Next,
            Err(e) => {
                let _ = write_frame(
                    &mut stream,
                    &Response::Error {
                        message: format!("bad request frame: {e}"),
                        fatal: false,
                    },
                );
                return Flow::Next;
            }
        };
        if request == Request::Cancel {
            // A generation's stop that came after it ended: nothing to stop, nothing to say.
            continue;
        }
        if request == Request::Shutdown {
            if args.fault == Some(Fault::IgnoreShutdown) {
                continue;
            }
            return Flow::Exit;
        }
        let hang = match (&request, args.fault) {
            (Request::Load { .. }, Some(Fault::CrashOnLoad)) => std::process::abort(),
            (Request::Load { .. }, Some(Fault::HangOnLoad)) => true,
            (Request::Infer { .. }, Some(Fault::HangOnInfer)) => true,
            _ => false,
        };
        if hang {
            // Tests wait for this file, then act on a worker known to be inside the request.
            let _ = std::fs::write(args.socket.with_extension("hanging"), b"");
            loop {
                std::thread::park();
            }
        }
        if request == Request::Hang && args.test_ops {
            // A hung worker: never answers again, keeps its memory, ignores its socket.
            loop {
                std::thread::park();
            }
        }
        let runs_model = matches!(
            request,
            Request::Infer { .. } | Request::Embed { .. } | Request::Generate { .. }
        );
        let response = match std::panic::catch_unwind(AssertUnwindSafe(|| match request {
            Request::Generate { prompt, sampling } => {
                generate(&mut stream, engine.as_mut(), &prompt, &sampling)
            }
            other => handle(other, engine, args),
        })) {
            Ok(r) => r,
            Err(panic) => Response::Error {
                message: format!("the worker panicked: {}", panic_message(&panic)),
                fatal: true,
            },
        };
        let fatal = matches!(response, Response::Error { fatal: true, .. });
        worked |= runs_model && !matches!(response, Response::Error { .. });
        if write_frame(&mut stream, &response).is_err() {
            return Flow::Next;
        }
        if fatal {
            return Flow::Exit;
        }
    }
}

/// Serves a generation: each piece of text goes out as it is made; between pieces, a
/// [`Request::Cancel`] from the agent (or its leaving) ends it.
fn generate(
    stream: &mut UnixStream,
    engine: &mut dyn Engine,
    prompt: &Prompt,
    sampling: &Sampling,
) -> Response {
    let mut emit = |text: &str| {
        let piece = Response::Piece {
            text: text.to_string(),
        };
        write_frame(stream, &piece).is_ok() && !cancelled(stream)
    };
    match engine.generate(prompt, sampling, &mut emit) {
        Ok(outcome) => Response::Generated(outcome),
        Err(GenError::Rejected(message)) => Response::Rejected { message },
        Err(GenError::Failed(message)) => Response::Error {
            message,
            fatal: false,
        },
    }
}

/// Whether the agent asked to stop (or left): reads a waiting frame, never waits for one.
fn cancelled(stream: &mut UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    match recv(stream.as_raw_fd(), &mut byte, flags) {
        // Closed: nobody reads what comes next.
        Ok(0) => true,
        // A frame: the only one the agent sends during a generation is Cancel.
        Ok(_) => {
            let _ = read_frame::<Request>(stream);
            true
        }
        Err(_) => false,
    }
}

fn handle(request: Request, engine: &mut Box<dyn Engine>, args: &WorkerArgs) -> Response {
    let error = |message: String| Response::Error {
        message,
        fatal: false,
    };
    match request {
        Request::Hello => Response::Hello {
            pid: std::process::id(),
            instance: args.instance.clone(),
            backend: engine.backend().to_string(),
        },
        Request::Load { spec } => {
            if matches!(spec.kind, ModelKind::Server(_)) {
                // A model server is supervised, not built: no burn backend, no device context.
                *engine = Box::new(ServerEngine::new(args));
            }
            match engine.load(&spec) {
                Ok(info) => Response::Loaded {
                    params: info.params,
                    param_bytes: info.param_bytes,
                    context_ms: info.context_ms,
                    weights_ms: info.weights_ms,
                    warmup_ms: info.warmup_ms,
                    read_bytes: info.read_bytes,
                    port: info.port,
                    working_bytes: info.working_bytes,
                },
                Err(message) => error(message),
            }
        }
        Request::Infer { tokens } => match engine.infer(&tokens) {
            Ok(i) => Response::Inferred {
                next_tokens: i.next_tokens,
                checksum: i.checksum,
                compute_ms: i.compute_ms,
            },
            Err(message) => error(message),
        },
        Request::Embed { texts } => match engine.embed(&texts) {
            Ok((vectors, tokens)) => Response::Embedded {
                dim: vectors.first().map_or(0, Vec::len),
                vectors: super::protocol::encode_f32(vectors.iter().flatten().copied()),
                tokens,
            },
            Err(message) => error(message),
        },
        Request::Memory => {
            let (in_use, reserved) = engine.allocator();
            Response::Memory(WorkerMemory {
                rss_bytes: engine.tree_rss(),
                in_use_bytes: in_use,
                reserved_bytes: reserved,
                leaked_bytes: engine.leaked(),
            })
        }
        Request::Cleanup => {
            let (_, before) = engine.allocator();
            engine.cleanup();
            let (_, after) = engine.allocator();
            Response::Cleaned {
                reserved_before: before,
                reserved_after: after,
            }
        }
        Request::Leak { mib, pooled } if args.test_ops => match engine.leak(mib << 20, pooled) {
            Ok(()) => Response::Ok,
            Err(message) => error(message),
        },
        Request::Leak { .. } | Request::Hang => {
            error("test-only ops are disabled in this worker".into())
        }
        Request::Generate { .. } => error("generation is served by its own loop".into()),
        Request::Shutdown | Request::Cancel => Response::Ok,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
