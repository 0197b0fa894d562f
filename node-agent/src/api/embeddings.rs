//! OpenAI-style embeddings: `POST /v1/embeddings`. A model that is not active is switched to
//! first (trigger `auto`).

use std::sync::Arc;

use axum::extract::State;
use base64::Engine as _;
use vramkeeper_crds::openai::{
    Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, EncodingFormat,
};

use super::{
    ApiJson, limits,
    route::{AuthClass, Operation, Route, SERVING_ERRORS},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
    worker::protocol::{Request, Response, decode_f32},
};

pub(super) fn routes() -> Vec<Route> {
    vec![Route::post(
        "/v1/embeddings",
        embeddings,
        AuthClass::Inference,
        Operation::json::<EmbeddingResponse>(
            "OpenAI-style sentence embeddings; switches to the model first if needed.",
        )
        .body::<EmbeddingRequest>()
        .errors(SERVING_ERRORS),
    )]
}

async fn embeddings(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<ApiJson<EmbeddingResponse>> {
    let device = app.device(req.gpu)?;
    let spec = device.spec(&req.model)?;
    let Some(shape) = spec.kind.capabilities().embeddings else {
        return Err(ApiError::Invalid(format!(
            "{} is a {} model, not an embedding model; /v1/models lists which models embed",
            spec.name,
            spec.kind.name()
        )));
    };
    if let Some(d) = req.dimensions
        && d as usize != shape.dim
    {
        return Err(ApiError::Invalid(format!(
            "dimensions {d}: {} only produces {}-dimensional vectors",
            spec.name, shape.dim
        )));
    }
    let texts = req.input.texts();
    limits::embedding_inputs(&texts)?;
    device.fits(&spec)?;
    let (response, _switched) = device.serve(&req.model, Request::Embed { texts }).await?;
    let Response::Embedded {
        vectors,
        dim,
        tokens,
    } = response
    else {
        return Err(ApiError::Internal(format!(
            "worker answered {response:?} to embed"
        )));
    };
    let vectors = decode_f32(&vectors, dim).map_err(ApiError::Internal)?;
    let prompt_tokens: u64 = tokens.iter().map(|&t| t as u64).sum();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding".into(),
            index,
            embedding: match req.encoding_format {
                EncodingFormat::Float => EmbeddingVector::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
        })
        .collect();
    Ok(ApiJson(EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}
