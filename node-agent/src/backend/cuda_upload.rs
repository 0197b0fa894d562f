//! Checkpoint bytes to CUDA memory at the bus's pace.
//!
//! burn's own path creates a tensor from a host vector: the file read into pageable memory,
//! then one synchronous copy per tensor (0.38 GB/s for a 2.5 GB checkpoint on an H100). Here
//! the tensors are allocated in file order, a group of about [`GROUP`] bytes at a time, while
//! the lanes ([`super::cuda_lanes`]) copy the groups already allocated: allocation (one
//! `cuMemAlloc` per tensor: 32-52 ms for checkpoints of 2.5 to 8 GB on an H200) runs beside
//! the copies instead of before them, and the staging memory is pinned on a thread of its own
//! meanwhile. A tensor
//! stored in another dtype than the one served is copied as stored and cast on the device, a
//! bounded batch at a time (the stored copies never all live beside the cast ones).

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
    cuda_lanes::{Allocated, Chunk, PAGEABLE_BELOW, Staging, copy, lanes_for, shape},
    upload::Source,
};

/// Bytes of stored tensors on the device at once, waiting to be cast.
const CAST_BATCH: usize = 1 << 30;
/// Bytes of tensors allocated before the lanes may copy into them.
const GROUP: usize = 256 << 20;

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
    let total: usize = sources.iter().map(|s| s.len).sum();
    let mut made: Vec<Option<CubeTensor<CudaRuntime>>> = vec![None; sources.len()];
    let mut clock = Clock::default();
    std::thread::scope(|s| -> Result<(), String> {
        // Pinned staging memory (pinning takes milliseconds per tens of MiB) is prepared on a
        // thread of its own while the first group is allocated; pageable memory for a small
        // checkpoint, right here. It serves every batch.
        let (mut pending, mut staging) = (None, None);
        if total >= PAGEABLE_BELOW {
            pending = Some(s.spawn(|| Staging::prepare(device.index, total)));
        } else {
            staging = Some(Staging::prepare(device.index, total)?);
        }
        for batch in batches.iter().filter(|b| !b.is_empty()) {
            let plan = Plan::new(sources, batch);
            let allocated = Allocated::new(plan.order.len());
            let mut handles = Vec::with_capacity(plan.order.len());
            let mut groups = plan.groups(sources).into_iter();
            let at = Instant::now();
            if let Some(first) = groups.next() {
                allocate(
                    device,
                    sources,
                    &plan.order[first],
                    &mut handles,
                    &allocated,
                )?;
            }
            clock.first_group += at.elapsed();
            let at = Instant::now();
            if let Some(p) = pending.take() {
                staging = Some(p.join().expect("preparing the staging does not panic")?);
            }
            let staging = staging.as_ref().expect("prepared before the first copy");
            clock.wait_staging += at.elapsed();
            let at = Instant::now();
            copy(
                staging,
                files,
                paths,
                &plan.chunks(sources),
                &allocated,
                || {
                    groups.try_for_each(|g| {
                        allocate(device, sources, &plan.order[g], &mut handles, &allocated)
                    })
                },
            )?;
            clock.copy += at.elapsed();
            let at = Instant::now();
            for (&i, t) in plan
                .order
                .iter()
                .zip(finish(device, sources, &plan.order, handles)?)
            {
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
        first_group_ms = crate::units::ms(clock.first_group),
        wait_staging_ms = crate::units::ms(clock.wait_staging),
        copy_ms = crate::units::ms(clock.copy),
        cast_ms = crate::units::ms(clock.cast),
        gb_per_s = total as f64 / started.elapsed().as_secs_f64() / 1e9,
        "weights on the device"
    );
    Ok(made
        .into_iter()
        .map(|t| t.expect("every source is in one batch"))
        .collect())
}

/// Where an upload's time went, for the debug log.
#[derive(Default)]
struct Clock {
    first_group: std::time::Duration,
    wait_staging: std::time::Duration,
    copy: std::time::Duration,
    cast: std::time::Duration,
}

/// A batch's tensors (indices into the sources) in file order: the order they are allocated
/// and copied in.
struct Plan {
    order: Vec<usize>,
}

impl Plan {
    fn new(sources: &[Source], batch: &[usize]) -> Self {
        let mut order = batch.to_vec();
        order.sort_by_key(|&i| (sources[i].file, sources[i].offset));
        Self { order }
    }

    /// Ranges of `order` of about [`GROUP`] bytes each (a tensor larger than that alone).
    fn groups(&self, sources: &[Source]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (at, &i) in self.order.iter().enumerate() {
            if bytes >= GROUP {
                out.push(start..at);
                (start, bytes) = (at, 0);
            }
            bytes += sources[i].len;
        }
        if start < self.order.len() {
            out.push(start..self.order.len());
        }
        out
    }

    /// The sources cut into chunks of at most the staging's chunk size, in file order.
    fn chunks(&self, sources: &[Source]) -> Vec<Chunk> {
        let size = shape().chunk;
        self.order
            .iter()
            .enumerate()
            .flat_map(|(tensor, &i)| {
                let s = &sources[i];
                (0..s.len).step_by(size).map(move |within| Chunk {
                    file: s.file,
                    offset: s.offset + within as u64,
                    len: size.min(s.len - within),
                    tensor,
                    within,
                })
            })
            .collect()
    }
}

/// Allocates the tensors `group` names (indices into `sources`, next in the plan's order),
/// keeps their handles and publishes their addresses for the lanes.
fn allocate(
    device: &CudaDevice,
    sources: &[Source],
    group: &[usize],
    handles: &mut Vec<Handle>,
    allocated: &Allocated,
) -> Result<(), String> {
    let client = CudaRuntime::client(device);
    let kept = |i: usize| sources[i].stored == sources[i].dtype;
    // Tensors kept as stored are the weights themselves: allocated in the persistent pool
    // (exact sizes); the others are stored copies on the device, cast below.
    let made = client
        .memory_persistent_allocation((), |()| {
            group
                .iter()
                .map(|&i| kept(i).then(|| client.empty(sources[i].len)))
                .collect::<Vec<_>>()
        })
        .map_err(|e| format!("allocating the weights: {e:?}"))?;
    let made: Vec<_> = made
        .into_iter()
        .zip(group)
        .map(|(h, &i)| h.unwrap_or_else(|| client.empty(sources[i].len)))
        .collect();
    let addresses = made
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
    handles.extend(made);
    allocated.publish(&addresses);
    Ok(())
}

/// The tensors `order` names, their bytes copied into `handles`: as stored, or cast.
fn finish(
    device: &CudaDevice,
    sources: &[Source],
    order: &[usize],
    handles: Vec<Handle>,
) -> Result<Vec<CubeTensor<CudaRuntime>>, String> {
    let client = CudaRuntime::client(device);
    let tensors: Vec<_> = handles
        .into_iter()
        .zip(order)
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
            client
                .memory_persistent_allocation(t, |t| Gpu::float_cast(t, s.dtype.into()))
                .expect("the device is up: it just took the weights")
        })
        .collect();
    // The stored copies are freed once their casts ran: the next batch reuses their pages.
    Gpu::sync(device).map_err(|e| format!("casting the weights: {e:?}"))?;
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

    fn sources() -> Vec<Source> {
        const MIB: usize = 1 << 20;
        vec![
            source(1, 0, 100 * MIB),
            source(0, 700 * MIB as u64, 3 * MIB + 5),
            source(0, 0, 600 * MIB),
            source(1, 100 * MIB as u64, 200 * MIB),
            source(0, 600 * MIB as u64, 100 * MIB),
            source(1, 300 * MIB as u64, 10),
        ]
    }

    #[test]
    fn a_plan_takes_the_tensors_in_file_order_in_groups_that_close_at_group_bytes() {
        let sources = sources();
        let plan = Plan::new(&sources, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(plan.order, [2, 4, 1, 0, 3, 5]);
        let groups = plan.groups(&sources);
        // The 600 MiB tensor alone; then 100 + 3 + 100 MiB reach 256 only with the 200 MiB one.
        assert_eq!(groups, [0..1, 1..5, 5..6]);
        let bytes = |g: &std::ops::Range<usize>| -> usize {
            plan.order[g.clone()].iter().map(|&i| sources[i].len).sum()
        };
        for g in &groups[..groups.len() - 1] {
            assert!(bytes(g) >= GROUP, "{g:?} closed early");
            let without_last = g.start..g.end - 1;
            assert!(bytes(&without_last) < GROUP, "{g:?} closed late");
        }
    }

    #[test]
    fn chunks_cover_every_tensor_exactly_once_within_the_chunk_size() {
        let sources = sources();
        let plan = Plan::new(&sources, &[5, 3, 1]);
        let chunks = plan.chunks(&sources);
        let size = shape().chunk;
        for (tensor, &i) in plan.order.iter().enumerate() {
            let mine: Vec<_> = chunks.iter().filter(|c| c.tensor == tensor).collect();
            let mut within = 0;
            for c in &mine {
                assert_eq!(c.within, within, "tensor {i}: a gap or an overlap");
                assert_eq!(c.file, sources[i].file);
                assert_eq!(c.offset, sources[i].offset + within as u64);
                assert!(c.len > 0 && c.len <= size);
                within += c.len;
            }
            assert_eq!(within, sources[i].len, "tensor {i} not covered");
        }
        // In the plan's order, so the lanes wait on the allocation front only.
        assert!(chunks.windows(2).all(|w| w[0].tensor <= w[1].tensor));
    }
}
