//! The burn backends a worker runs models on, and what vramkeeper needs of each beyond burn:
//! allocator figures and cleanup (cubecl's pool on CUDA, glibc's heap on the CPU, where the
//! "allocator cache" is what malloc keeps after frees and `malloc_trim` returns it), and the
//! kernels a backend runs better than burn's generic composition ([`kernels`]).

#[cfg(feature = "cuda")]
mod cuda_lanes;
#[cfg(feature = "cuda")]
mod cuda_upload;
pub(crate) mod gelu;
pub(crate) mod kernels;
pub(crate) mod upload;

use std::{fs::File, path::PathBuf};

use burn::{
    backend::Flex,
    tensor::{DType, Distribution},
};

/// A backend models run on: its kernels and its memory operations.
pub trait ModelBackend: kernels::Kernels {
    /// Whether the backend is an accelerator (a GPU): weights are generated on the device
    /// rather than copied from the host, and batches are wide.
    const ACCELERATOR: bool;
    /// Bytes (in use by live allocations, reserved from the device or the OS).
    fn allocator_bytes(device: &Self::Device) -> (u64, u64);
    /// Returns pooled memory to the device (or the OS) and waits until it is done.
    fn release_pooled(device: &Self::Device);
    /// Test-only: leaves `bytes` in the allocator's pool, as freed-but-kept memory.
    fn pooled_leak(device: &Self::Device, bytes: u64);
    /// Creates the tensors `sources` describe from the bytes of `files` (opened from `paths`),
    /// in their order; runs `beside` on the calling thread meanwhile (on CUDA while the bytes
    /// are in flight, when that thread would only wait) and returns what it made.
    fn upload<T>(
        device: &Self::Device,
        files: &[File],
        paths: &[PathBuf],
        sources: &[upload::Source],
        beside: impl FnOnce() -> T,
    ) -> Result<(Vec<Self::FloatTensorPrimitive>, T), String>;
    /// A tensor of `shape` uniform in `[-scale, scale)`, drawn by the device's own generator
    /// (seeded with `Backend::seed`) into an allocation of its exact size: a weight that shares
    /// no pool page with anything else, so that nothing around it stays reserved.
    fn random_weight(
        device: &Self::Device,
        shape: Vec<usize>,
        scale: f32,
        dtype: DType,
    ) -> Self::FloatTensorPrimitive {
        Self::float_random(
            shape.into(),
            Distribution::Uniform(-f64::from(scale), f64::from(scale)),
            device,
            dtype.into(),
        )
    }
}

/// The CPU backend.
pub(crate) type Cpu = Flex<f32>;

impl ModelBackend for Cpu {
    const ACCELERATOR: bool = false;

    fn allocator_bytes(_: &Self::Device) -> (u64, u64) {
        glibc::usage()
    }

    fn release_pooled(_: &Self::Device) {
        glibc::trim();
    }

    fn pooled_leak(_: &Self::Device, bytes: u64) {
        glibc::fragment(bytes);
    }

    fn upload<T>(
        device: &Self::Device,
        files: &[File],
        paths: &[PathBuf],
        sources: &[upload::Source],
        beside: impl FnOnce() -> T,
    ) -> Result<(Vec<Self::FloatTensorPrimitive>, T), String> {
        let made = beside();
        Ok((
            upload::through_host::<Self>(device, files, paths, sources)?,
            made,
        ))
    }
}

mod glibc {
    //! glibc's allocator statistics and trimming (the CPU analogue of `cuda.empty_cache()`).
    #![allow(unsafe_code)]

    use std::sync::atomic::{AtomicU64, Ordering};

    /// Free heap bytes at the last trim: their pages went back to the OS, so they are free
    /// but not resident. Only free bytes beyond them are resident cache.
    static TRIMMED_FREE: AtomicU64 = AtomicU64::new(0);

    fn free_bytes() -> u64 {
        // SAFETY: mallinfo2 only reads allocator statistics; it has no preconditions.
        unsafe { libc::mallinfo2() }.fordblks as u64
    }

    /// (in use, reserved): allocated chunks plus mmapped blocks; and that plus the free heap
    /// memory that is still resident (freed since the last trim).
    pub(super) fn usage() -> (u64, u64) {
        // SAFETY: as above.
        let info = unsafe { libc::mallinfo2() };
        let in_use = info.uordblks as u64 + info.hblkhd as u64;
        let free = info.fordblks as u64;
        // The heap shrinks on its own too: never count below what is free now.
        let trimmed = TRIMMED_FREE.fetch_min(free, Ordering::Relaxed).min(free);
        (in_use, in_use + (free - trimmed))
    }

    /// Returns free heap pages to the OS.
    pub(super) fn trim() {
        // SAFETY: malloc_trim only releases free memory; no pointer is invalidated.
        unsafe {
            libc::malloc_trim(0);
        }
        TRIMMED_FREE.store(free_bytes(), Ordering::Relaxed);
    }

    /// Allocates `bytes` in heap-sized chunks separated by small live pins, touches them, then
    /// frees the chunks: the heap cannot shrink past the pins, so the memory stays resident
    /// and counted as free-but-kept until `trim`. The pins (1/512 of the size) are kept.
    pub(super) fn fragment(bytes: u64) {
        const CHUNK: usize = 64 * 1024;
        let mut chunks = Vec::new();
        let mut pins = Vec::new();
        for _ in 0..(bytes as usize).div_ceil(CHUNK) {
            chunks.push(vec![1u8; CHUNK]);
            pins.push(vec![1u8; 128]);
        }
        drop(chunks);
        PINS.with(|p| p.borrow_mut().push(pins));
    }

    thread_local! {
        static PINS: std::cell::RefCell<Vec<Vec<Vec<u8>>>> = const { std::cell::RefCell::new(Vec::new()) };
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::{
        backend::{Cuda, cuda::CudaDevice},
        cubecl::{Runtime, cuda::CudaRuntime},
        prelude::*,
    };

    use std::{fs::File, path::PathBuf};

    use burn::tensor::DType;

    use super::{ModelBackend, upload::Source};

    /// The CUDA backend.
    pub(crate) type Gpu = Cuda<f32, i32>;

    impl ModelBackend for Gpu {
        const ACCELERATOR: bool = true;

        fn allocator_bytes(device: &CudaDevice) -> (u64, u64) {
            match CudaRuntime::client(device).memory_usage() {
                Ok(u) => (u.bytes_in_use, u.bytes_reserved),
                Err(_) => (0, 0),
            }
        }

        fn release_pooled(device: &CudaDevice) {
            let _ = Gpu::sync(device);
            Gpu::memory_cleanup(device);
            let _ = Gpu::sync(device);
        }

        fn pooled_leak(device: &CudaDevice, bytes: u64) {
            let t = Tensor::<Gpu, 1>::ones([(bytes / 4) as usize], device);
            let _ = Gpu::sync(device);
            drop(t);
            let _ = Gpu::sync(device);
        }

        fn upload<T>(
            device: &CudaDevice,
            files: &[File],
            paths: &[PathBuf],
            sources: &[Source],
            beside: impl FnOnce() -> T,
        ) -> Result<(Vec<Self::FloatTensorPrimitive>, T), String> {
            super::cuda_upload::upload(device, files, paths, sources, beside)
        }

        fn random_weight(
            device: &CudaDevice,
            shape: Vec<usize>,
            scale: f32,
            dtype: DType,
        ) -> Self::FloatTensorPrimitive {
            super::cuda_upload::random_weight(device, shape, scale, dtype)
        }
    }
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::Gpu;
