//! Creating a model's tensors from checkpoint bytes: what to read, and the host path (read,
//! convert, create) that the CPU backend uses. The CUDA backend's path is in `cuda_upload`.

use std::{fs::File, os::unix::fs::FileExt, path::PathBuf};

use burn::tensor::{DType, TensorData, backend::Backend};

/// One tensor to create: where its bytes are and what it becomes.
#[derive(Debug, Clone)]
pub struct Source {
    /// Index of the file among those passed with it.
    pub file: usize,
    /// Byte offset of its data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub len: usize,
    /// The dtype of those bytes.
    pub stored: DType,
    pub shape: Vec<usize>,
    /// The dtype of the tensor to create.
    pub dtype: DType,
}

/// Reads `len` bytes at `offset` of `files[file]`, naming the file if it cannot.
pub(crate) fn read(
    files: &[File],
    paths: &[PathBuf],
    file: usize,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), String> {
    files[file].read_exact_at(buf, offset).map_err(|e| {
        format!(
            "{}: reading {} bytes at {offset}: {e}",
            paths[file].display(),
            buf.len()
        )
    })
}

/// The host path: each tensor read into memory, converted there, and created on the device.
pub(crate) fn through_host<B: Backend>(
    device: &B::Device,
    files: &[File],
    paths: &[PathBuf],
    sources: &[Source],
) -> Result<Vec<B::FloatTensorPrimitive>, String> {
    sources
        .iter()
        .map(|s| {
            let mut bytes = vec![0u8; s.len];
            read(files, paths, s.file, s.offset, &mut bytes)?;
            let data = TensorData::from_bytes_vec(bytes, s.shape.clone(), s.stored);
            let data = if s.stored == s.dtype {
                data
            } else {
                data.convert_dtype(s.dtype)
            };
            Ok(B::float_from_data(data, device))
        })
        .collect()
}
