//! OpenAI-style embeddings: `POST /v1/embeddings`. A model that is not active is switched to
//! first (trigger `auto`).

use std::sync::Arc;

use axum::{
    extract::State,
    http::HeaderMap,
    response::{self, IntoResponse},
};
use base64::Engine as _;
use serde_json::Value;
use vramkeeper_crds::openai::{
    Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, EncodingFormat,
};

use super::{
    ApiJson, json, limits, openai,
    route::{AuthClass, Operation, Route},
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
            "OpenAI-style sentence embeddings, by the agent's own embedding models or passed \
             through to a server model's server; switches to the model first if needed.",
        )
        .body::<EmbeddingRequest>()
        .errors(&[404, 409, 502, 503, 504]),
    )]
}

async fn embeddings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<response::Response> {
    // A server model's own server embeds: the request passes through to it.
    let model = openai::model_of(&body)?;
    let gpu = body.get("gpu").and_then(Value::as_u64).map(|g| g as u32);
    let device = openai::device_for(&app, &model, gpu)?;
    if device.spec(&model)?.kind.capabilities().openai {
        if let Some(fields) = body.as_object_mut() {
            fields.remove("gpu");
        }
        return openai::forward(&app, device, &model, "/v1/embeddings", &headers, &body).await;
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let req: EmbeddingRequest = json::parse(&bytes)?;
    Ok(embed(&app, req).await?.into_response())
}

async fn embed(app: &App, req: EmbeddingRequest) -> Result<ApiJson<EmbeddingResponse>> {
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
