//! The lanes that move checkpoint bytes to the device (see [`super::cuda_upload`]): host
//! threads, each reading the next chunk of the files (`pread` from the page cache, straight
//! into its staging buffer: one host copy) and queueing its copy on its own stream, reading
//! the next chunk into its other buffer while that copy runs. No lane waits for another. The
//! staging buffers are one pinned region shared by the lanes; a checkpoint of a few MB
//! is staged in pageable memory instead (pinning costs more than it saves there), with fewer
//! lanes.

#![allow(unsafe_code)]

use std::{
    ffi::c_void,
    fs::File,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use cudarc::driver::{result, sys};

use super::upload::read;

/// Bytes a lane reads and copies at a time.
const CHUNK: usize = 2 << 20;
/// Staging buffers per lane: one being filled while the other's copy runs.
const BUFFERS: usize = 2;
/// Lanes at most (host threads reading and queueing copies), and the bytes that justify one.
const MAX_LANES: usize = 16;
const BYTES_PER_LANE: usize = 16 << 20;

/// The staging shape: the constants above, or for a benchmark's sweep
/// `VRAMKEEPER_UPLOAD_SHAPE=<chunk KiB>,<buffers>,<lanes at most>`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) chunk: usize,
    pub(super) buffers: usize,
    pub(super) max_lanes: usize,
}

/// The staging shape in use.
pub(super) fn shape() -> Shape {
    static SHAPE: std::sync::OnceLock<Shape> = std::sync::OnceLock::new();
    *SHAPE.get_or_init(|| {
        let default = Shape {
            chunk: CHUNK,
            buffers: BUFFERS,
            max_lanes: MAX_LANES,
        };
        let Ok(text) = std::env::var("VRAMKEEPER_UPLOAD_SHAPE") else {
            return default;
        };
        match parse_shape(&text) {
            Some(shape) => shape,
            None => {
                tracing::warn!(
                    text,
                    "VRAMKEEPER_UPLOAD_SHAPE is not <chunk KiB 4..=65536>,<buffers 1..=8>,\
                     <lanes 1..=64>: ignored"
                );
                default
            }
        }
    })
}

/// `<chunk KiB>,<buffers>,<lanes at most>`, each field a number within its bounds.
fn parse_shape(text: &str) -> Option<Shape> {
    let n = text
        .split(',')
        .map(|x| x.trim().parse::<usize>().ok())
        .collect::<Option<Vec<_>>>()?;
    match n[..] {
        [c, b, l] if (4..=65536).contains(&c) && (1..=8).contains(&b) && (1..=64).contains(&l) => {
            Some(Shape {
                chunk: c << 10,
                buffers: b,
                max_lanes: l,
            })
        }
        _ => None,
    }
}

/// Checkpoints smaller than this are staged in pageable memory, where a copy of a few MB takes
/// about as long as pinning a lane's buffers. Above it pinning pays: all-MiniLM-L6-v2's 90 MB
/// crossed from pageable memory at 4.5-7 GB/s on an H200 (docs/benchmarks.md).
const PAGEABLE_BELOW: usize = 16 << 20;

/// Whether `total` bytes are staged in pinned memory (else pageable).
pub(super) fn pins(total: usize) -> bool {
    total >= PAGEABLE_BELOW
}

fn driver(what: &str, e: result::DriverError) -> String {
    format!("CUDA {what}: {e}")
}

/// The device's primary context (the one burn's CUDA backend runs in), retained while the
/// lanes use it.
struct Context {
    ctx: sys::CUcontext,
    device: sys::CUdevice,
}

// SAFETY: a CUDA context may be made current on any thread; it is released only on drop,
// after every lane has ended (they are scoped).
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    fn retain(index: usize) -> Result<Self, String> {
        let device = result::device::get(index as i32).map_err(|e| driver("device", e))?;
        // SAFETY: `device` is a valid device.
        let ctx =
            unsafe { result::primary_ctx::retain(device) }.map_err(|e| driver("context", e))?;
        Ok(Self { ctx, device })
    }

    /// Makes the context current on the calling thread.
    fn enter(&self) -> Result<(), String> {
        // SAFETY: the context is retained for `self`'s life.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| driver("context", e))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: retained in `retain`, released once.
        let _ = unsafe { result::primary_ctx::release(self.device) };
    }
}

/// The lanes' staging memory, zeroed: pinned or pageable.
///
/// Pinned memory is mapped and its pages touched by host threads first, in parallel and
/// outside the driver, and only then registered with the driver, which pins pages already
/// there (~3 ms for 64 MiB on an H200's host). `cuMemHostAlloc` faulted every page in under
/// the driver's lock instead (~33 ms for 64 MiB), and the device allocation running beside it
/// waited that long.
struct Region {
    base: *mut u8,
    bytes: usize,
    memory: Memory,
}

/// Where a region's bytes live.
enum Memory {
    /// A `Vec`, kept only to be freed: the lanes write through `base` (moving a `Vec` does not
    /// move its heap buffer).
    Pageable { _owned: Vec<u8> },
    /// An anonymous mapping, registered with the driver unless the driver refused.
    Mapped { registered: bool },
}

// SAFETY: the region is owned by one `Staging`; the lanes write through `base` into disjoint
// parts of it, scoped inside its life.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `bytes` of staging, pinned or not; pinned pages are touched by `threads` threads.
    fn new(bytes: usize, pinned: bool, threads: usize) -> Result<Self, String> {
        if !pinned {
            let mut memory = vec![0; bytes];
            return Ok(Self {
                base: memory.as_mut_ptr(),
                bytes,
                memory: Memory::Pageable { _owned: memory },
            });
        }
        // SAFETY: a private anonymous mapping of `bytes` (zeroed, page-aligned), unmapped on
        // drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mapping {bytes} bytes of staging memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut region = Self {
            base: ptr.cast(),
            bytes,
            memory: Memory::Mapped { registered: false },
        };
        // Huge pages where the kernel grants them: fewer pages to fault in and to pin. Without
        // this advice the H200 host's loads of 2.47 GB fell from 69-70 % to 65 % of pinned,
        // and MiniLM's from 11-19 ms to 14-27 ms (docs/benchmarks.md). Advice only: refused,
        // the mapping keeps small pages.
        // SAFETY: the range is the mapping just made.
        let _ = unsafe { libc::madvise(ptr, bytes, libc::MADV_HUGEPAGE) };
        let base = region.base();
        let part = bytes.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for start in (0..bytes).step_by(part) {
                let len = part.min(bytes - start);
                // SAFETY: each thread writes its own disjoint range of the mapping.
                s.spawn(move || unsafe { std::ptr::write_bytes(base.at(start), 0, len) });
            }
        });
        // SAFETY: the range is mapped and its pages present; unregistered on drop.
        match unsafe { sys::cuMemHostRegister_v2(ptr, bytes, 0).result() } {
            Ok(()) => region.memory = Memory::Mapped { registered: true },
            // Some platforms refuse registration (confidential computing, some virtual
            // machines): the copies still work from pageable memory, slower.
            Err(e) => tracing::warn!(
                error = %e,
                "the driver refused to pin the staging memory: copying from pageable memory"
            ),
        }
        Ok(region)
    }

    fn base(&self) -> Shared {
        Shared(self.base)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let Memory::Mapped { registered } = self.memory else {
            return;
        };
        // SAFETY: mapped (and registered if `registered`) in `new`; dropped after every lane's
        // stream has finished (the lanes are scoped inside its life), with the context current
        // (`Staging`'s drop).
        unsafe {
            if registered
                && let Err(e) = sys::cuMemHostUnregister(self.base.cast::<c_void>()).result()
            {
                // Pages the driver still counts as pinned must not be reused: left mapped.
                tracing::warn!(error = %e, bytes = self.bytes, "staging memory not unregistered: kept");
                return;
            }
            libc::munmap(self.base.cast::<c_void>(), self.bytes);
        }
    }
}

/// A pointer the lanes share: each uses a disjoint part.
#[derive(Clone, Copy)]
struct Shared(*mut u8);
// SAFETY: each lane reads and writes only its own part of the region, which outlives them.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The address `offset` bytes in (a method, so closures capture the whole wrapper).
    fn at(self, offset: usize) -> *mut u8 {
        self.0.wrapping_add(offset)
    }
}

/// A staging buffer and the event recorded after the copy that last read it.
struct Buffer {
    ptr: *mut u8,
    event: sys::CUevent,
}

/// One lane's stream and its staging buffers' events, released on drop after the stream has
/// finished.
struct Lane {
    stream: sys::CUstream,
    buffers: Vec<Buffer>,
}

impl Lane {
    /// A lane staging in the shape's `buffers` chunks from `part` on.
    fn new(part: *mut u8) -> Result<Self, String> {
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| driver("stream", e))?;
        let Shape { chunk, buffers, .. } = shape();
        let mut lane = Self {
            stream,
            buffers: Vec::with_capacity(buffers),
        };
        for b in 0..buffers {
            let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| driver("event", e))?;
            lane.buffers.push(Buffer {
                ptr: part.wrapping_add(b * chunk),
                event,
            });
        }
        Ok(lane)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // SAFETY: the stream and events were created by `new` and are released once, after
        // the stream's last copy has finished reading the buffers.
        unsafe {
            let _ = result::stream::synchronize(self.stream);
            for b in &self.buffers {
                let _ = result::event::destroy(b.event);
            }
            let _ = result::stream::destroy(self.stream);
        }
    }
}

/// Lanes for `total` bytes: one per [`BYTES_PER_LANE`], as many as the host has cores, at
/// most [`MAX_LANES`].
pub(super) fn lanes_for(total: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(shape().max_lanes)
        .min(total.div_ceil(BYTES_PER_LANE))
        .max(1)
}

/// What the lanes share for a whole upload: the staging memory and the context. The region
/// is declared first, so it is freed before the context is released.
pub(super) struct Staging {
    region: Region,
    lanes: usize,
    context: Context,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The region is unregistered with the context current, on whichever thread drops it.
        let _ = self.context.enter();
    }
}

impl Staging {
    /// The context retained and the lanes' staging memory for `total` bytes allocated.
    pub(super) fn prepare(index: usize, total: usize) -> Result<Self, String> {
        let lanes = lanes_for(total);
        let Shape { chunk, buffers, .. } = shape();
        let context = Context::retain(index)?;
        context.enter()?;
        let region = Region::new(lanes * buffers * chunk, pins(total), lanes)?;
        Ok(Self {
            region,
            lanes,
            context,
        })
    }
}

/// One contiguous range of a file bound for a device address.
pub(super) struct Chunk {
    pub file: usize,
    pub offset: u64,
    pub len: usize,
    pub dst: u64,
}

/// Moves every chunk to the device through the lanes, running `beside` on the calling thread
/// meanwhile; returns what it made once all of it is there, or the first error.
pub(super) fn copy<T>(
    staging: &Staging,
    files: &[File],
    paths: &[PathBuf],
    chunks: &[Chunk],
    beside: impl FnOnce() -> T,
) -> Result<T, String> {
    let Shape { chunk, buffers, .. } = shape();
    let Staging {
        region,
        lanes,
        context,
    } = staging;
    context.enter()?;
    let base = region.base();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let stop = |e: String| {
        failed.store(true, Ordering::Relaxed);
        first_error
            .lock()
            .expect("no lane panics holding it")
            .get_or_insert(e);
    };
    let made = std::thread::scope(|s| {
        for lane_index in 0..*lanes {
            let (next, failed, stop) = (&next, &failed, &stop);
            s.spawn(move || {
                let run = || -> Result<(), String> {
                    context.enter()?;
                    let lane = Lane::new(base.at(lane_index * buffers * chunk))?;
                    let mut i = 0;
                    while !failed.load(Ordering::Relaxed) {
                        let Some(c) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let b = &lane.buffers[i % buffers];
                        if i >= buffers {
                            // SAFETY: the event is this lane's.
                            unsafe { result::event::synchronize(b.event) }
                                .map_err(|e| driver("copy", e))?;
                        }
                        // SAFETY: the buffer holds `chunk` initialised bytes, `c.len` ≤ `chunk`,
                        // and its last copy has finished (its event waited on).
                        let buf = unsafe { std::slice::from_raw_parts_mut(b.ptr, c.len) };
                        read(files, paths, c.file, c.offset, buf)?;
                        // SAFETY: `dst` lies in a live device allocation with `c.len` bytes
                        // past it; the buffer is not touched again before the event passes.
                        unsafe {
                            sys::cuMemcpyHtoDAsync_v2(c.dst, b.ptr.cast(), c.len, lane.stream)
                                .result()
                        }
                        .map_err(|e| driver("host-to-device copy", e))?;
                        // SAFETY: the event and the stream are this lane's.
                        unsafe { result::event::record(b.event, lane.stream) }
                            .map_err(|e| driver("copy", e))?;
                        i += 1;
                    }
                    // SAFETY: the stream is this lane's.
                    unsafe { result::stream::synchronize(lane.stream) }
                        .map_err(|e| driver("copy", e))
                };
                if let Err(e) = run() {
                    stop(e);
                }
            });
        }
        beside()
    });
    match first_error.into_inner().expect("no lane panics holding it") {
        Some(e) => Err(e),
        None => Ok(made),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_benchmark_shape_is_taken_only_whole_and_within_bounds() {
        let s = parse_shape("1024, 4,8").expect("a valid shape");
        assert_eq!((s.chunk, s.buffers, s.max_lanes), (1 << 20, 4, 8));
        for bad in [
            "",
            "2048,2",
            "2048,2,16,1",
            "2048,x,16",
            "2048,,16",
            "0,2,16",
            "3,2,16",
            "65537,2,16",
            "2048,0,16",
            "2048,9,16",
            "2048,2,0",
            "2048,2,65",
            "-1,2,16",
            "99999999999999999999,2,16",
        ] {
            assert!(parse_shape(bad).is_none(), "{bad:?} was taken");
        }
    }
}
