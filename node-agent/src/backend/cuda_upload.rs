//! Checkpoint bytes to CUDA memory at the bus's pace.
//!
//! burn's own path creates a tensor from a host vector: the file read into pageable memory,
//! then one synchronous copy per tensor (0.38 GB/s for a 2.5 GB checkpoint on an H100). Here
//! every device buffer is allocated first; then one lane per host core takes the next chunk of
//! the files, reads it (`pread` from the page cache, straight into the lane's staging buffer:
//! one host copy) and queues its copy to the device on the lane's own stream, reading the next
//! chunk into its other buffer while that copy runs. No lane waits for another. The staging
//! buffers are one pinned allocation shared by the lanes; a small checkpoint is staged in
//! pageable memory instead (pinning costs more than it saves there), with fewer lanes. A tensor
//! stored in another dtype than the one served is copied as stored and cast on the device, a
//! bounded batch at a time (the stored copies never all live beside the cast ones).

#![allow(unsafe_code)]

use std::{
    ffi::c_void,
    fs::File,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use burn::{
    backend::cuda::CudaDevice,
    cubecl::{Runtime, cuda::CudaRuntime},
    prelude::Backend,
    tensor::ops::FloatTensorOps,
};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{result, sys};

use super::{
    Gpu,
    upload::{Source, read},
};

/// Bytes a lane reads and copies at a time.
const CHUNK: usize = 2 << 20;
/// Staging buffers per lane: one being filled while the other's copy runs.
const BUFFERS: usize = 2;
/// Lanes at most (host threads reading and queueing copies), and the bytes that justify one.
const MAX_LANES: usize = 16;
const BYTES_PER_LANE: usize = 16 << 20;
/// Checkpoints smaller than this are staged in pageable memory (measured on an H100: pinning
/// the lanes' buffers took longer than copying all-MiniLM-L6-v2's 90 MB from pageable memory).
const PAGEABLE_BELOW: usize = 256 << 20;
/// Bytes of stored tensors on the device at once, waiting to be cast.
const CAST_BATCH: usize = 1 << 30;

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

/// The lanes' staging memory: one pinned allocation, or pageable memory.
enum Region {
    Pinned(*mut u8),
    Pageable(Vec<u8>),
}

impl Region {
    fn new(bytes: usize, pinned: bool) -> Result<Self, String> {
        if !pinned {
            return Ok(Self::Pageable(vec![0; bytes]));
        }
        // SAFETY: a plain pinned host allocation; freed on drop. Each lane zeroes its part
        // before reading into it.
        let ptr = unsafe { result::malloc_host(bytes, 0) }
            .map_err(|e| driver("pinned host allocation", e))?;
        Ok(Self::Pinned(ptr.cast()))
    }

    fn base(&mut self) -> Shared {
        Shared(match self {
            Self::Pinned(p) => *p,
            Self::Pageable(v) => v.as_mut_ptr(),
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Self::Pinned(p) = self {
            // SAFETY: from `malloc_host`; dropped after every lane's stream has finished
            // (the lanes are scoped inside its life).
            let _ = unsafe { result::free_host(p.cast::<c_void>()) };
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
    /// A lane staging in the [`BUFFERS`] chunks from `part` on.
    fn new(part: *mut u8) -> Result<Self, String> {
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| driver("stream", e))?;
        let mut lane = Self {
            stream,
            buffers: Vec::with_capacity(BUFFERS),
        };
        // SAFETY: the region holds BUFFERS chunks for each lane from `part` on.
        unsafe { std::ptr::write_bytes(part, 0, BUFFERS * CHUNK) };
        for b in 0..BUFFERS {
            let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(|e| driver("event", e))?;
            lane.buffers.push(Buffer {
                ptr: part.wrapping_add(b * CHUNK),
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

/// One contiguous range of a file bound for a device address.
struct Chunk {
    file: usize,
    offset: u64,
    len: usize,
    dst: u64,
}

/// Cuts the sources into chunks of at most [`CHUNK`] bytes, in file order.
fn chunks(sources: &[Source], dst: &[u64]) -> Vec<Chunk> {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (sources[i].file, sources[i].offset));
    order
        .into_iter()
        .flat_map(|i| {
            let s = &sources[i];
            (0..s.len).step_by(CHUNK).map(move |done| Chunk {
                file: s.file,
                offset: s.offset + done as u64,
                len: CHUNK.min(s.len - done),
                dst: dst[i] + done as u64,
            })
        })
        .collect()
}

/// Creates the tensors `sources` describe on `device` (see the module's documentation).
pub(crate) fn upload(
    device: &CudaDevice,
    files: &[File],
    paths: &[PathBuf],
    sources: &[Source],
) -> Result<Vec<CubeTensor<CudaRuntime>>, String> {
    let started = Instant::now();
    // Tensors kept as stored go straight to their place, all at once; the others in batches.
    let (kept, cast): (Vec<usize>, Vec<usize>) =
        (0..sources.len()).partition(|&i| sources[i].stored == sources[i].dtype);
    let mut batches = vec![kept];
    let mut bytes = CAST_BATCH;
    for i in cast {
        if bytes + sources[i].len > CAST_BATCH {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += sources[i].len;
        batches.last_mut().expect("one batch at least").push(i);
    }
    let mut made: Vec<Option<CubeTensor<CudaRuntime>>> = vec![None; sources.len()];
    for batch in batches.iter().filter(|b| !b.is_empty()) {
        for (i, t) in batch
            .iter()
            .zip(upload_batch(device, files, paths, sources, batch)?)
        {
            made[*i] = Some(t);
        }
    }
    let bytes: usize = sources.iter().map(|s| s.len).sum();
    tracing::debug!(
        bytes,
        lanes = lanes_for(bytes),
        cast_batches = batches.len() - 1,
        ms = crate::units::ms(started.elapsed()),
        gb_per_s = bytes as f64 / started.elapsed().as_secs_f64() / 1e9,
        "weights on the device"
    );
    Ok(made
        .into_iter()
        .map(|t| t.expect("every source is in one batch"))
        .collect())
}

/// Creates the tensors `batch` (indices into `sources`) names.
fn upload_batch(
    device: &CudaDevice,
    files: &[File],
    paths: &[PathBuf],
    sources: &[Source],
    batch: &[usize],
) -> Result<Vec<CubeTensor<CudaRuntime>>, String> {
    let client = CudaRuntime::client(device);
    let kept = |i: usize| sources[i].stored == sources[i].dtype;
    // Tensors kept as stored are the weights themselves: allocated in the persistent pool
    // (exact sizes); the others are stored copies on the device, cast below.
    let handles = client
        .memory_persistent_allocation((), |()| {
            batch
                .iter()
                .map(|&i| kept(i).then(|| client.empty(sources[i].len)))
                .collect::<Vec<_>>()
        })
        .map_err(|e| format!("allocating the weights: {e:?}"))?;
    let handles: Vec<_> = handles
        .into_iter()
        .zip(batch)
        .map(|(h, &i)| h.unwrap_or_else(|| client.empty(sources[i].len)))
        .collect();
    let resources = handles
        .iter()
        .map(|h| client.get_resource(h.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("allocating the weights: {e:?}"))?;
    let dst: Vec<u64> = resources.iter().map(|r| r.resource().ptr).collect();
    let picked: Vec<Source> = batch.iter().map(|&i| sources[i].clone()).collect();
    // The allocations are ordered on burn's stream; the copies run on others.
    Gpu::sync(device).map_err(|e| format!("allocating the weights: {e:?}"))?;
    copy(device.index, files, paths, &chunks(&picked, &dst))?;
    drop(resources);
    let tensors: Vec<_> = handles
        .into_iter()
        .zip(batch)
        .map(|(handle, &i)| {
            let s = &sources[i];
            let t = CubeTensor::new_contiguous(
                client.clone(),
                device.clone(),
                s.shape.clone().into(),
                handle,
                s.stored,
            );
            if kept(i) {
                return t;
            }
            client
                .memory_persistent_allocation(t, |t| Gpu::float_cast(t, s.dtype.into()))
                .expect("the device is up: it just took the weights")
        })
        .collect();
    // The stored copies are freed once their casts ran: the next batch reuses their pages.
    Gpu::sync(device).map_err(|e| format!("casting the weights: {e:?}"))?;
    Ok(tensors)
}

/// Lanes for `total` bytes: one per [`BYTES_PER_LANE`], as many as the host has cores, at
/// most [`MAX_LANES`].
fn lanes_for(total: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(MAX_LANES)
        .min(total.div_ceil(BYTES_PER_LANE))
        .max(1)
}

/// Moves every chunk to the device through the lanes; returns once all of it is there.
fn copy(index: usize, files: &[File], paths: &[PathBuf], chunks: &[Chunk]) -> Result<(), String> {
    let total: usize = chunks.iter().map(|c| c.len).sum();
    let lanes = lanes_for(total);
    let context = Context::retain(index)?;
    context.enter()?;
    // Declared before the lanes' scope: freed only after every lane's stream has finished.
    let mut region = Region::new(lanes * BUFFERS * CHUNK, total >= PAGEABLE_BELOW)?;
    let base = region.base();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for lane_index in 0..lanes {
            let (context, next, failed, first_error) = (&context, &next, &failed, &first_error);
            s.spawn(move || {
                let run = || -> Result<(), String> {
                    context.enter()?;
                    let lane = Lane::new(base.at(lane_index * BUFFERS * CHUNK))?;
                    let mut i = 0;
                    while !failed.load(Ordering::Relaxed) {
                        let Some(c) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let b = &lane.buffers[i % BUFFERS];
                        if i >= BUFFERS {
                            // SAFETY: the event is this lane's.
                            unsafe { result::event::synchronize(b.event) }
                                .map_err(|e| driver("copy", e))?;
                        }
                        // SAFETY: the buffer holds CHUNK initialised bytes, `c.len` ≤ CHUNK,
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
                    failed.store(true, Ordering::Relaxed);
                    first_error
                        .lock()
                        .expect("no lane panics holding it")
                        .get_or_insert(e);
                }
            });
        }
    });
    drop(region);
    match first_error.into_inner().expect("no lane panics holding it") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A weight drawn on the device (see [`super::ModelBackend::random_weight`]): the allocation
/// made as for a checkpoint's tensor (the persistent pool, its exact size, contiguous), then
/// filled by cubecl's uniform generator. Its persistent scope ends in cubecl's dynamic mode:
/// the caller must not be inside a scope of its own.
pub(crate) fn random_weight(
    device: &CudaDevice,
    shape: Vec<usize>,
    scale: f32,
    dtype: burn::tensor::DType,
) -> CubeTensor<CudaRuntime> {
    let client = CudaRuntime::client(device);
    let bytes = shape.iter().product::<usize>() * dtype.size();
    let handle = client
        .memory_persistent_allocation((), |()| client.empty(bytes))
        .expect("the device is up: it runs this worker's model");
    let tensor =
        CubeTensor::new_contiguous(client.clone(), device.clone(), shape.into(), handle, dtype);
    cubek::random::random_uniform(
        &client,
        -scale,
        scale,
        tensor.clone().binding(),
        dtype.into(),
    )
    .expect("the uniform generator launches on every float dtype");
    tensor
}
