//! The `hf` kind against transformers and sentence-transformers, on the CPU: tiny random
//! checkpoints of each architecture (made with those libraries, `vramkeeper_e2e::checkpoints`)
//! give the same logits (within 1e-4), the same 32 greedy tokens (through the key/value
//! cache), the same chat prompts and the same sentence embeddings (cosine ≥ 0.99999).

use std::path::PathBuf;

use burn::tensor::DType;
use serde_json::Value;
use vramkeeper_e2e::checkpoints::{reference, tiny_checkpoints};

use super::{
    chat_template::ChatTemplate,
    generate::{TextStream, argmax},
    hf::HfSpec,
    hf_config::{self, Architecture, DecoderConfig},
    kind::{Kind, Loaded},
    llama_net::Decoder,
    sentence::SentenceEncoder,
};
use crate::backend::Cpu;

const DECODERS: [&str; 3] = ["llama", "qwen2", "mistral"];

fn dir(name: &str) -> PathBuf {
    tiny_checkpoints().join(name)
}

/// The decoder, its linear weights stored transposed (as on the CPU) or as in the checkpoint
/// (as on CUDA).
fn decoder_in(name: &str, transposed: bool) -> (Decoder<Cpu>, DecoderConfig) {
    let Architecture::Decoder(config) = hf_config::read(&dir(name)).unwrap() else {
        panic!("{name} is not a decoder")
    };
    let device = Default::default();
    let (decoder, _) = Decoder::<Cpu>::load(&dir(name), config, DType::F32, transposed, &device)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (decoder, config)
}

fn decoder(name: &str) -> (Decoder<Cpu>, DecoderConfig) {
    decoder_in(name, true)
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_checkpoint_passes_the_catalog_check_with_its_parameter_count() {
    for name in DECODERS.iter().chain(&["bert", "bert-cls"]) {
        let spec: HfSpec = toml::from_str(&format!("dir = {:?}", dir(name))).unwrap();
        spec.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        let params = reference(name)["params"].as_u64().unwrap();
        assert_eq!(spec.size().params, params, "{name}");
    }
    // `max_batch` bounds an encoder's batches; a decoder has none to bound.
    let with = |name: &str, max_batch: u32| -> HfSpec {
        toml::from_str(&format!("dir = {:?}\nmax_batch = {max_batch}", dir(name))).unwrap()
    };
    assert!(with("bert", 16).check().is_ok());
    assert!(with("bert", 0).check().unwrap_err().contains("max_batch 0"));
    assert!(
        with("bert", 5000)
            .check()
            .unwrap_err()
            .contains("max_batch 5000")
    );
    let decoder = with(DECODERS[0], 16).check().unwrap_err();
    assert!(
        decoder.contains("max_batch applies to encoders"),
        "{decoder}"
    );
}

#[test]
fn decoder_logits_match_transformers_within_1e_4() {
    for (name, transposed) in DECODERS.iter().flat_map(|&n| [(n, true), (n, false)]) {
        let (decoder, config) = decoder_in(name, transposed);
        let r = reference(name);
        let prompt = ids(&r["logits"]["ids"]);
        let expected: Vec<f32> = r["logits"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let mut cache = decoder.cache();
        let logits = decoder.forward(&prompt, &mut cache, true);
        assert_eq!(logits.dims(), [prompt.len(), config.vocab], "{name}");
        let got = logits.into_data().to_vec::<f32>().unwrap();
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: logits differ by up to {worst}");
    }
}

#[test]
fn greedy_continuations_through_the_cache_match_transformers() {
    for name in DECODERS {
        let (decoder, _) = decoder(name);
        let r = reference(name);
        let mut tokens = ids(&r["greedy"]["ids"]);
        let expected = ids(&r["greedy"]["new_ids"]);
        let mut cache = decoder.cache();
        let mut logits = decoder.forward(&tokens, &mut cache, false);
        let mut new = Vec::new();
        while new.len() < expected.len() {
            let values = logits.into_data().to_vec::<f32>().unwrap();
            let next = argmax(&values);
            new.push(next);
            tokens.push(next);
            logits = decoder.forward(&[next], &mut cache, false);
        }
        assert_eq!(new, expected, "{name}");
    }
}

#[test]
fn chat_templates_render_and_tokenize_as_transformers() {
    for name in DECODERS {
        let r = reference(name);
        let template = ChatTemplate::load(&dir(name))
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no chat template"));
        let tokenizer = tokenizers::Tokenizer::from_file(dir(name).join("tokenizer.json")).unwrap();
        for case in r["chat"].as_array().unwrap() {
            let messages = case["messages"].as_array().unwrap();
            let rendered = template.render(messages).unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{name}");
            let encoded = tokenizer.encode(rendered, false).unwrap();
            assert_eq!(encoded.get_ids(), ids(&case["ids"]), "{name}");
        }
        for case in r["chat_errors"].as_array().into_iter().flatten() {
            let error = template
                .render(case["messages"].as_array().unwrap())
                .unwrap_err();
            let words = case["error"].as_str().unwrap();
            assert!(error.contains(words), "{name}: {error:?} lacks {words:?}");
        }
    }
}

#[test]
fn max_batch_bounds_the_working_memory_estimate() {
    let Architecture::Bert(config) = hf_config::read(&dir("bert")).unwrap() else {
        panic!("bert is not BERT")
    };
    let working = |max_batch| {
        SentenceEncoder::<Cpu>::load_dir(
            &dir("bert"),
            config,
            DType::F32,
            Some(max_batch),
            &Default::default(),
        )
        .unwrap()
        .working_bytes()
        .unwrap()
    };
    assert_eq!(
        working(4),
        2 * working(2),
        "the batch's tensors scale with it"
    );
    let zero = SentenceEncoder::<Cpu>::load_dir(
        &dir("bert"),
        config,
        DType::F32,
        Some(0),
        &Default::default(),
    );
    assert!(
        zero.err().unwrap().contains("max_batch 0"),
        "a worker refuses it too"
    );
}

#[test]
fn bert_embeddings_match_sentence_transformers() {
    // One batch, and batches of two (`max_batch`): the same vectors, in the input's order.
    for (name, max_batch) in [("bert", None), ("bert-cls", None), ("bert", Some(2))] {
        let Architecture::Bert(config) = hf_config::read(&dir(name)).unwrap() else {
            panic!("{name} is not BERT")
        };
        let encoder = SentenceEncoder::<Cpu>::load_dir(
            &dir(name),
            config,
            DType::F32,
            max_batch,
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = reference(name);
        let sentences: Vec<String> = r["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let (vectors, counts) = encoder.embed(&sentences).unwrap();
        assert_eq!(counts, ids(&r["token_counts"]), "{name}");
        for (i, (got, want)) in vectors
            .iter()
            .zip(r["embeddings"].as_array().unwrap())
            .enumerate()
        {
            let want: Vec<f64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let dot: f64 = got.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
            let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
            let cosine =
                dot / (norm(&mut got.iter().map(|&x| x as f64)) * norm(&mut want.iter().copied()));
            assert!(cosine >= 0.99999, "{name}: sentence {i}: cosine {cosine}");
            if r["normalize"] == true {
                let length = norm(&mut got.iter().map(|&x| x as f64));
                assert!((length - 1.0).abs() < 1e-5, "{name}: length {length}");
            }
        }
    }
}

#[test]
fn streamed_text_pieces_add_up_to_the_whole_decode_and_stop_where_asked() {
    for name in DECODERS {
        let r = reference(name);
        let tokenizer = tokenizers::Tokenizer::from_file(dir(name).join("tokenizer.json")).unwrap();
        let new = ids(&r["greedy"]["new_ids"]);
        let whole = r["greedy"]["new_text"].as_str().unwrap();
        let mut stream = TextStream::new(&tokenizer, &[]);
        let mut text: String = new.iter().map(|&id| stream.push(id).unwrap()).collect();
        text.push_str(&stream.finish().unwrap());
        assert_eq!(text, whole, "{name}");
        // A stop sequence from the middle: the text ends right before it.
        let cut = whole
            .char_indices()
            .nth(whole.chars().count() / 2)
            .unwrap()
            .0;
        let stop = vec![whole[cut..].chars().take(3).collect::<String>()];
        let at = whole.find(&stop[0]).unwrap();
        let mut stream = TextStream::new(&tokenizer, &stop);
        let mut text = String::new();
        for &id in &new {
            text.push_str(&stream.push(id).unwrap());
            if stream.stopped() {
                break;
            }
        }
        text.push_str(&stream.finish().unwrap());
        assert_eq!(text, whole[..at], "{name}");
    }
}
