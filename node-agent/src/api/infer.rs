//! Inference: `/v1/infer`, a forward pass over token ids (models whose kind takes them). A
//! model that is not active is switched to first (trigger `auto`).

use std::sync::Arc;

use axum::extract::State;
use vramkeeper_crds::api::{InferRequest, InferResponse};

use super::{
    ApiJson,
    route::{AuthClass, Operation, Route, SERVING_ERRORS},
};
use crate::{
    api::error::{ApiError, Result},
    app::App,
    worker::protocol::{Request, Response},
};

pub(super) fn routes() -> Vec<Route> {
    vec![Route::post(
        "/v1/infer",
        infer,
        AuthClass::Inference,
        Operation::json::<InferResponse>(
            "A forward pass over token ids, for models that take them (`capabilities` in \
             /v1/models); switches to the model first if needed.",
        )
        .body::<InferRequest>()
        .errors(SERVING_ERRORS),
    )]
}

async fn infer(
    State(app): State<Arc<App>>,
    ApiJson(req): ApiJson<InferRequest>,
) -> Result<ApiJson<InferResponse>> {
    let device = app.device(req.gpu)?;
    let spec = device.spec(&req.model)?;
    let Some(input) = spec.kind.capabilities().infer else {
        return Err(ApiError::Invalid(format!(
            "{} is a {} model, which does not take token ids; /v1/models lists what each model serves",
            spec.name,
            spec.kind.name()
        )));
    };
    if req.tokens.is_empty() {
        return Err(ApiError::Invalid("tokens must not be empty".into()));
    }
    if req.tokens.len() > input.context as usize {
        return Err(ApiError::Invalid(format!(
            "{} tokens exceed {}'s context of {}",
            req.tokens.len(),
            spec.name,
            input.context
        )));
    }
    if let Some(bad) = req.tokens.iter().find(|t| **t >= input.vocab) {
        return Err(ApiError::Invalid(format!(
            "token {bad} is not below {}'s vocabulary size {}",
            spec.name, input.vocab
        )));
    }
    device.fits(&spec)?;
    let (response, switched) = device
        .serve(&req.model, Request::Infer { tokens: req.tokens })
        .await?;
    match response {
        Response::Inferred {
            next_tokens,
            checksum,
            compute_ms,
        } => Ok(ApiJson(InferResponse {
            model: req.model,
            next_tokens,
            checksum,
            switched,
            compute_ms,
        })),
        other => Err(ApiError::Internal(format!(
            "worker answered {other:?} to infer"
        ))),
    }
}
