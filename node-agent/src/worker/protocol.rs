//! The framed protocol between the agent and a worker process, over a Unix socket.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. The agent sends
//! one [`Request`] and reads one [`Response`]; a worker serves one request at a time. The one
//! exception is [`Request::Generate`]: the worker answers with [`Response::Piece`]s as text is
//! made, then one final answer; meanwhile the agent may send [`Request::Cancel`].

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::models::{
    ModelSpec,
    generate::{Outcome, Prompt, Sampling},
};

/// The largest frame either side accepts (embedding batches are the biggest messages).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What the agent asks a worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who are you? Answered with [`Response::Hello`].
    Hello,
    /// Build the model on the worker's device.
    Load {
        /// The catalog entry to build.
        spec: ModelSpec,
    },
    /// A forward pass of the loaded synthetic model.
    Infer {
        /// Input token ids.
        tokens: Vec<u32>,
    },
    /// Sentence embeddings from the loaded embedding model.
    Embed {
        /// The texts.
        texts: Vec<String>,
    },
    /// Text generation by the loaded decoder: answered by pieces, then
    /// [`Response::Generated`] (or an error).
    Generate {
        /// What to continue.
        prompt: Prompt,
        /// How to pick tokens and when to stop.
        sampling: Sampling,
    },
    /// Sent during a generation: nobody wants the rest (it ends `cancelled`). Ignored at
    /// other times.
    Cancel,
    /// The worker's memory: resident set and allocator figures.
    Memory,
    /// Release pooled allocator memory (the seed's `empty_cache`).
    Cleanup,
    /// Test-only (workers started with `--test-ops`): hold extra memory, as a leak would.
    Leak {
        /// How much.
        mib: u64,
        /// `true`: allocate and drop, so the memory stays in the allocator's pool until a
        /// cleanup; `false`: keep it referenced, so only ending the worker releases it.
        pooled: bool,
    },
    /// Test-only: stop answering (a hung worker); the connection stays open.
    Hang,
    /// Exit the process.
    Shutdown,
}

impl Request {
    /// The op name, for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Load { .. } => "load",
            Self::Infer { .. } => "infer",
            Self::Embed { .. } => "embed",
            Self::Generate { .. } => "generate",
            Self::Cancel => "cancel",
            Self::Memory => "memory",
            Self::Cleanup => "cleanup",
            Self::Leak { .. } => "leak",
            Self::Hang => "hang",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a worker answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The worker's process id.
        pid: u32,
        /// The agent instance that started it.
        instance: String,
        /// `cuda` or `flex`.
        backend: String,
    },
    /// The model is built and answered a warm-up pass.
    Loaded {
        /// Parameters in the model.
        params: u64,
        /// Bytes the parameters take on the device.
        param_bytes: u64,
        /// Milliseconds creating the device context (the first touch of the device).
        context_ms: f64,
        /// Milliseconds spent creating the weights on the device.
        weights_ms: f64,
        /// Milliseconds of the warm-up forward pass.
        warmup_ms: f64,
        /// Bytes of weight files read (checkpoints).
        #[serde(default)]
        read_bytes: u64,
        /// The port the model's own server listens on (server models; on 127.0.0.1).
        #[serde(default)]
        port: Option<u16>,
        /// Bytes of the tensors one request holds at once at its largest (where estimated).
        #[serde(default)]
        working_bytes: Option<u64>,
    },
    /// A forward pass.
    Inferred {
        /// Arg-max next token per position.
        next_tokens: Vec<u32>,
        /// Sum of the logits.
        checksum: f64,
        /// Milliseconds the pass took.
        compute_ms: f64,
    },
    /// Embeddings, one vector per text.
    Embedded {
        /// The vectors, concatenated, as base64 of little-endian f32 (JSON float arrays cost
        /// more to print and parse than the model takes to compute on a GPU).
        vectors: String,
        /// Width of one vector.
        dim: usize,
        /// Tokens per text, after truncation.
        tokens: Vec<u32>,
    },
    /// A piece of generated text (more follows).
    Piece {
        /// The text.
        text: String,
    },
    /// A generation ended.
    Generated(Outcome),
    /// The request cannot be served as asked (the client's mistake; the worker is fine).
    Rejected {
        /// Why.
        message: String,
    },
    /// Memory figures.
    Memory(WorkerMemory),
    /// Pooled memory released.
    Cleaned {
        /// Allocator bytes reserved before and after.
        reserved_before: u64,
        /// After the cleanup.
        reserved_after: u64,
    },
    /// Plain acknowledgement.
    Ok,
    /// The request failed; the worker is still usable unless `fatal`.
    Error {
        /// What went wrong.
        message: String,
        /// The worker cannot go on and will exit.
        fatal: bool,
    },
}

/// A worker's memory, as it sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct WorkerMemory {
    /// Resident set size of the process.
    pub rss_bytes: u64,
    /// Bytes the allocator hands out to live tensors.
    pub in_use_bytes: u64,
    /// Bytes the allocator holds from the device (or the OS), used or not.
    pub reserved_bytes: u64,
    /// Extra memory held by the test-only leak op.
    pub leaked_bytes: u64,
}

impl WorkerMemory {
    /// Memory the allocator keeps without using it: what a cleanup can give back.
    pub fn pooled_bytes(&self) -> u64 {
        self.reserved_bytes.saturating_sub(self.in_use_bytes)
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A frame longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Bytes that are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Base64 of little-endian f32s.
pub fn encode_f32(values: impl Iterator<Item = f32>) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`encode_f32`]'s output into vectors of `dim` values.
pub fn decode_f32(text: &str, dim: usize) -> Result<Vec<Vec<f32>>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("malformed vectors: {e}"))?;
    if dim == 0 || bytes.len() % (4 * dim) != 0 {
        return Err(format!(
            "{} bytes are not vectors of {dim} f32s",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4 * dim)
        .map(|v| {
            v.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("protocol messages serialize");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Decodes the body of a frame (the bytes after the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Checks a length prefix.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one frame (blocking; the worker side).
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), FrameError> {
    w.write_all(&encode(message))?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (blocking; the worker side).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        other => other?,
    }
    let mut body = vec![0u8; frame_len(prefix)?];
    r.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = vec![];
        write_frame(
            &mut buf,
            &Request::Infer {
                tokens: vec![1, 2, 3],
            },
        )
        .unwrap();
        write_frame(&mut buf, &Request::Memory).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame::<Request>(&mut r).unwrap(),
            Request::Infer {
                tokens: vec![1, 2, 3]
            }
        );
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), Request::Memory);
        assert!(matches!(
            read_frame::<Request>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn vectors_round_trip_through_base64() {
        let v = vec![vec![1.0f32, -2.5, 3.25], vec![0.0, f32::MIN_POSITIVE, 7.0]];
        let text = encode_f32(v.iter().flatten().copied());
        assert_eq!(decode_f32(&text, 3).unwrap(), v);
        assert!(decode_f32(&text, 4).is_err());
        assert!(decode_f32("!!", 3).is_err());
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame::<Request>(&mut huge.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{nope");
        assert!(matches!(
            read_frame::<Request>(&mut bad.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let truncated = [0u8, 0, 0, 9, b'{'];
        assert!(matches!(
            read_frame::<Request>(&mut truncated.as_slice()),
            Err(FrameError::Io(_))
        ));
    }
}
