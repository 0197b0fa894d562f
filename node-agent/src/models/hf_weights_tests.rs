//! The safetensors loader on hand-written files: values land in the right parameters (renamed,
//! converted from bf16), and every malformed or mismatched file is refused naming what is wrong.

use std::path::Path;

use burn::{module::Module, prelude::*, tensor::DType};
use serde_json::json;

use super::{hf_weights, torch_linear::TorchLinear};
use crate::backend::Cpu;

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    proj: TorchLinear<B>,
}

fn tiny() -> Tiny<Cpu> {
    Tiny {
        proj: TorchLinear::new(3, 2, true, &Default::default()),
    }
}

/// Writes a safetensors file of `(name, dtype, shape, bytes)` into `dir`.
fn write(dir: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let text = serde_json::to_vec(&header).unwrap();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// bf16 is the upper half of an f32 (exact for the values used here).
fn bf16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

const REMAPS: [(&str, &str); 1] = [(r"^model\.dense\.", "proj.")];

fn load(dir: &Path) -> Result<Tiny<Cpu>, String> {
    hf_weights::load(tiny(), dir, &REMAPS, DType::F32, &Default::default()).map(|(m, _)| m)
}

#[test]
fn renamed_tensors_land_in_their_parameters_converted_to_the_served_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let weight = [1.0, 2.0, 3.0, -1.0, 0.5, 0.25];
    write(
        dir.path(),
        &[
            ("model.dense.weight", "BF16", vec![2, 3], bf16s(&weight)),
            ("model.dense.bias", "F32", vec![2], f32s(&[10.0, 20.0])),
            // Not the model's: never read, whatever it holds.
            ("model.pooler.weight", "I8", vec![4], vec![0; 4]),
        ],
    );
    let (model, bytes) =
        hf_weights::load(tiny(), dir.path(), &REMAPS, DType::F32, &Default::default()).unwrap();
    assert_eq!(bytes, 6 * 2 + 2 * 4, "only the model's tensors are read");
    let x = Tensor::<Cpu, 2>::from_data([[1.0, 1.0, 1.0]], &Default::default());
    let y: Vec<f32> = model.proj.forward(x).into_data().to_vec().unwrap();
    assert_eq!(y, vec![16.0, 19.75]);
}

/// The error loading `tensors` gives.
fn refused(dir: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> String {
    write(dir, tensors);
    load(dir).unwrap_err()
}

/// The error loading a file of a raw header `text` followed by `data` zero bytes gives.
fn refused_raw(dir: &Path, text: &[u8], data: usize) -> String {
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    bytes.extend(vec![0; data]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    load(dir).unwrap_err()
}

#[test]
fn a_wrong_shape_a_missing_tensor_and_an_unreadable_dtype_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = refused(
        dir.path(),
        &[
            ("model.dense.weight", "F32", vec![3, 2], f32s(&[0.0; 6])),
            ("model.dense.bias", "F32", vec![2], f32s(&[0.0; 2])),
        ],
    );
    assert!(
        e.contains("model.dense.weight has shape [3, 2]") && e.contains("[2, 3]"),
        "{e}"
    );

    let e = refused(
        dir.path(),
        &[("model.dense.weight", "F32", vec![2, 3], f32s(&[0.0; 6]))],
    );
    assert!(
        e.contains("lacks 1 tensor(s)") && e.contains("proj.bias"),
        "{e}"
    );

    let e = refused(
        dir.path(),
        &[
            ("model.dense.weight", "I8", vec![2, 3], vec![0; 6]),
            ("model.dense.bias", "F32", vec![2], f32s(&[0.0; 2])),
        ],
    );
    assert!(e.contains("stored as I8"), "{e}");
}

#[test]
fn a_malformed_file_is_refused_as_not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    std::fs::write(&file, [1, 2, 3]).unwrap();
    assert!(
        load(dir.path())
            .unwrap_err()
            .contains("not a safetensors file")
    );

    // A header claiming more bytes than the file has.
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&file, bytes).unwrap();
    assert!(
        load(dir.path())
            .unwrap_err()
            .contains("a header of 1000000 bytes")
    );

    // Data past the end of the file.
    let text = br#"{"model.dense.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let e = refused_raw(dir.path(), text, 4);
    assert!(e.contains("outside the file"), "{e}");

    // A length that does not fit the shape.
    let text = br#"{"model.dense.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let e = refused_raw(dir.path(), text, 8);
    assert!(e.contains("8 bytes for shape [3]"), "{e}");
}
