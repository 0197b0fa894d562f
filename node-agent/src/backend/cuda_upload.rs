//! Checkpoint bytes to CUDA memory at the bus's pace.
//!
//! burn's own path creates a tensor from a host vector: the file read into pageable memory,
//! then one synchronous copy per tensor (0.38 GB/s for a 2.5 GB checkpoint on an H100). Here
//! every device buffer is allocated first (in cubecl's persistent pool: exact sizes), while the
//! staging memory is prepared beside it (its pages touched by host threads, then registered
//! with the driver: pinned by `cuMemHostAlloc`, it held the driver's lock for ~33 ms and the
//! allocation waited); then the lanes ([`super::cuda_lanes`]) move the files' bytes through
//! it. A tensor stored in another dtype than the one served is copied as stored and cast on
//! the device, a bounded batch at a time: the stored copies of one batch are freed, and their
//! pages returned, before the next batch is allocated.

use std::{fs::File, path::PathBuf, time::Instant};

use burn::{
    backend::cuda::CudaDevice,
    cubecl::{Runtime, cuda::CudaRuntime, server::Handle},
    prelude::Backend,
    tensor::ops::FloatTensorOps,
};
use burn_cubecl::tensor::CubeTensor;

use super::{
    Gpu,
    cuda_lanes::{Chunk, Staging, copy, lanes_for, pins, shape},
    upload::Source,
};

/// Bytes of stored tensors on the device at once, waiting to be cast.
const CAST_BATCH: usize = 1 << 30;

/// Creates the tensors `sources` describe on `device` (see the module's documentation),
/// running `beside` on this thread while the first batch's bytes are copied.
pub(crate) fn upload<T>(
    device: &CudaDevice,
    files: &[File],
    paths: &[PathBuf],
    sources: &[Source],
    beside: impl FnOnce() -> T,
) -> Result<(Vec<CubeTensor<CudaRuntime>>, T), String> {
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
    let total: usize = sources.iter().map(|s| s.len).sum();
    let mut made: Vec<Option<CubeTensor<CudaRuntime>>> = vec![None; sources.len()];
    let mut clock = Clock::default();
    let mut beside = Some(beside);
    let mut made_beside = None;
    std::thread::scope(|s| -> Result<(), String> {
        // Pinned staging memory is prepared on a thread of its own while the device buffers
        // are allocated; pageable memory for a small checkpoint, right here. It serves every
        // batch.
        let at = Instant::now();
        let mut pending = pins(total).then(|| s.spawn(|| Staging::prepare(device.index, total)));
        let mut staging = match pending {
            Some(_) => None,
            None => Some(Staging::prepare(device.index, total)?),
        };
        clock.staging += at.elapsed();
        for batch in batches.iter().filter(|b| !b.is_empty()) {
            let at = Instant::now();
            let buffers = allocate(device, sources, batch)?;
            clock.allocate += at.elapsed();
            let at = Instant::now();
            if let Some(p) = pending.take() {
                staging = Some(p.join().expect("preparing the staging does not panic")?);
            }
            let staging = staging.as_ref().expect("prepared before the first copy");
            clock.staging += at.elapsed();
            let at = Instant::now();
            let picked: Vec<&Source> = batch.iter().map(|&i| &sources[i]).collect();
            let mut beside_once = || {
                let at = Instant::now();
                if let Some(f) = beside.take() {
                    made_beside = Some(f());
                }
                clock.beside += at.elapsed();
            };
            copy(
                staging,
                files,
                paths,
                &chunks(&picked, &buffers.dst),
                &mut beside_once,
            )?;
            clock.copy += at.elapsed();
            let at = Instant::now();
            for (&i, t) in batch.iter().zip(finish(device, sources, batch, buffers)?) {
                made[i] = Some(t);
            }
            clock.cast += at.elapsed();
        }
        Ok(())
    })?;
    tracing::debug!(
        bytes = total,
        lanes = lanes_for(total),
        shape = ?shape(),
        cast_batches = batches.len() - 1,
        ms = crate::units::ms(started.elapsed()),
        allocate_ms = crate::units::ms(clock.allocate),
        staging_ms = crate::units::ms(clock.staging),
        copy_ms = crate::units::ms(clock.copy),
        beside_ms = crate::units::ms(clock.beside),
        cast_ms = crate::units::ms(clock.cast),
        gb_per_s = total as f64 / started.elapsed().as_secs_f64() / 1e9,
        "weights on the device"
    );
    let made_beside = match made_beside {
        Some(m) => m,
        // Nothing was copied.
        None => beside.take().expect("run at most once, while copying")(),
    };
    let made = made
        .into_iter()
        .map(|t| t.expect("every source is in one batch"))
        .collect();
    Ok((made, made_beside))
}

/// Where an upload's time went, summed over its batches, for the debug log: allocating the
/// device buffers; the staging memory (pageable: preparing it; pinned: waiting for the thread
/// that pins it, after the first allocation); copying; the caller's work beside the first
/// copy (part of copying's time); casting (with the stored copies' cleanup).
#[derive(Default)]
struct Clock {
    allocate: std::time::Duration,
    staging: std::time::Duration,
    copy: std::time::Duration,
    beside: std::time::Duration,
    cast: std::time::Duration,
}

/// A batch's device buffers, allocated and not yet filled.
struct Buffers {
    handles: Vec<Handle>,
    dst: Vec<u64>,
}

/// Where each weight starts in a shared allocation: a multiple of this (cudaMalloc's own).
const ALIGN: usize = 256;

/// The most bytes one shared allocation holds: kernels index a tensor by the size of its
/// allocation, and one past 2^32 elements would make every kernel reading a weight use 64-bit
/// indices (a tensor larger than this gets an allocation of its own).
const SHARED_MAX: usize = 2 << 30;

/// Allocates the device buffers of `batch` (indices into `sources`).
fn allocate(device: &CudaDevice, sources: &[Source], batch: &[usize]) -> Result<Buffers, String> {
    let client = CudaRuntime::client(device);
    let kept = |i: usize| sources[i].stored == sources[i].dtype;
    // Tensors kept as stored are the weights themselves: a few allocations in the persistent
    // pool (their exact sizes; a few calls instead of one per tensor, milliseconds less for a
    // checkpoint of hundreds), each weight a slice of one, freed with the last of its slices.
    // The others are stored copies on the device, cast below and freed each on its own.
    let mut groups: Vec<usize> = Vec::new();
    let mut place = Vec::with_capacity(batch.len());
    for &i in batch {
        if !kept(i) {
            place.push(None);
            continue;
        }
        let len = sources[i].len.div_ceil(ALIGN) * ALIGN;
        let n = groups.len();
        match groups.last_mut() {
            Some(total) if *total + len <= SHARED_MAX => {
                place.push(Some((n - 1, *total)));
                *total += len;
            }
            _ => {
                place.push(Some((n, 0)));
                groups.push(len);
            }
        }
    }
    let shared = client
        .memory_persistent_allocation((), |()| {
            groups
                .iter()
                .map(|&total| client.empty(total))
                .collect::<Vec<_>>()
        })
        .map_err(|e| format!("allocating the weights: {e:?}"))?;
    let handles: Vec<_> = batch
        .iter()
        .zip(&place)
        .map(|(&i, place)| match *place {
            Some((group, at)) => shared[group]
                .clone()
                .offset_start(at as u64)
                .offset_end((groups[group] - at - sources[i].len) as u64),
            None => client.empty(sources[i].len),
        })
        .collect();
    let dst = handles
        .iter()
        .map(|h| {
            client
                .get_resource(h.clone())
                .map(|r| r.resource().ptr)
                .map_err(|e| format!("allocating the weights: {e:?}"))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    // The allocations are ordered on burn's stream; the copies run on others.
    Gpu::sync(device).map_err(|e| format!("allocating the weights: {e:?}"))?;
    Ok(Buffers { handles, dst })
}

/// Cuts the sources into chunks of at most the staging's chunk size, in file order.
fn chunks(sources: &[&Source], dst: &[u64]) -> Vec<Chunk> {
    let size = shape().chunk;
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (sources[i].file, sources[i].offset));
    order
        .into_iter()
        .flat_map(|i| {
            let s = sources[i];
            (0..s.len).step_by(size).map(move |done| Chunk {
                file: s.file,
                offset: s.offset + done as u64,
                len: size.min(s.len - done),
                dst: dst[i] + done as u64,
            })
        })
        .collect()
}

/// The tensors of `batch`, their bytes copied into `buffers`: as stored, or cast.
fn finish(
    device: &CudaDevice,
    sources: &[Source],
    batch: &[usize],
    buffers: Buffers,
) -> Result<Vec<CubeTensor<CudaRuntime>>, String> {
    let client = CudaRuntime::client(device);
    let mut cast = false;
    let tensors: Vec<_> = buffers
        .handles
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
            if s.stored == s.dtype {
                return t;
            }
            cast = true;
            client
                .memory_persistent_allocation(t, |t| Gpu::float_cast(t, s.dtype.into()))
                .expect("the device is up: it just took the weights")
        })
        .collect();
    Gpu::sync(device).map_err(|e| format!("casting the weights: {e:?}"))?;
    if cast {
        // The stored copies are freed once their casts ran; cubecl's exact-size pages would be
        // reused only by tensors of their size class, so they go back now, before the next
        // batch is allocated.
        Gpu::memory_cleanup(device);
        Gpu::sync(device).map_err(|e| format!("casting the weights: {e:?}"))?;
    }
    Ok(tensors)
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

#[cfg(test)]
mod tests {
    use burn::tensor::DType;

    use super::*;

    fn source(file: usize, offset: u64, len: usize) -> Source {
        Source {
            file,
            offset,
            len,
            stored: DType::BF16,
            shape: vec![len / 2],
            dtype: DType::BF16,
        }
    }

    #[test]
    fn chunks_cover_every_tensor_exactly_once_in_file_order() {
        const MIB: usize = 1 << 20;
        let sources = [
            source(1, 0, 100 * MIB),
            source(0, 700 * MIB as u64, 3 * MIB + 5),
            source(0, 0, 6 * MIB),
            source(1, 100 * MIB as u64, 10),
        ];
        let picked: Vec<&Source> = sources.iter().collect();
        let dst = [0x1000_0000, 0x2000_0000, 0x3000_0000, 0x4000_0000];
        let chunks = chunks(&picked, &dst);
        let size = shape().chunk;
        for (i, s) in sources.iter().enumerate() {
            let tensor = dst[i]..dst[i] + s.len as u64;
            let mut done = 0;
            for c in chunks.iter().filter(|c| tensor.contains(&c.dst)) {
                assert_eq!(c.file, s.file, "tensor {i}: the wrong file");
                assert_eq!(
                    c.dst,
                    tensor.start + done as u64,
                    "tensor {i}: a gap or an overlap"
                );
                assert_eq!(
                    c.offset,
                    s.offset + done as u64,
                    "tensor {i}: the wrong bytes"
                );
                assert!(c.len > 0 && c.len <= size);
                done += c.len;
            }
            assert_eq!(done, s.len, "tensor {i} not covered");
        }
        let total = |lens: &mut dyn Iterator<Item = usize>| lens.sum::<usize>();
        assert_eq!(
            total(&mut chunks.iter().map(|c| c.len)),
            total(&mut sources.iter().map(|s| s.len))
        );
        // In file order, so the page cache is read front to back.
        assert!(
            chunks
                .windows(2)
                .all(|w| (w[0].file, w[0].offset) < (w[1].file, w[1].offset))
        );
    }
}
