//! Bounds on the work one request may ask for, checked before any of it starts: embedding
//! inputs and their characters, and test-load lists (a model that cannot fit its device is
//! the device's to refuse: `Device::fits`).

use std::collections::HashSet;

use vramkeeper_crds::openai::{MAX_INPUT_CHARS, MAX_INPUTS};

use crate::{
    api::error::{ApiError, Result},
    models::Catalog,
};

/// Embedding inputs: at most [`MAX_INPUTS`] texts, [`MAX_INPUT_CHARS`] characters in all
/// (413 naming the bound); none empty (422).
pub(crate) fn embedding_inputs(texts: &[String]) -> Result<()> {
    if texts.is_empty() {
        return Err(ApiError::Invalid(
            "input must hold at least one text".into(),
        ));
    }
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::OverLimit {
            what: "embedding inputs",
            limit: MAX_INPUTS,
            got: texts.len(),
        });
    }
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    if chars > MAX_INPUT_CHARS {
        return Err(ApiError::OverLimit {
            what: "characters of embedding input",
            limit: MAX_INPUT_CHARS,
            got: chars,
        });
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::Invalid(format!("input[{i}] is an empty string")));
    }
    Ok(())
}

/// A test-load list: no longer than the catalog (413), each name once (422).
pub(crate) fn test_load_list(models: &[String], catalog: &Catalog) -> Result<()> {
    if models.is_empty() {
        return Err(ApiError::Invalid(
            "models, when given, must name at least one model".into(),
        ));
    }
    let limit = catalog.models().len();
    if models.len() > limit {
        return Err(ApiError::OverLimit {
            what: "test-load models (the catalog's size)",
            limit,
            got: models.len(),
        });
    }
    let mut seen = HashSet::new();
    if let Some(twice) = models.iter().find(|m| !seen.insert(m.as_str())) {
        return Err(ApiError::Invalid(format!(
            "models names {twice} more than once; each model is tested once per cycle"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_bounds_name_the_limit() {
        let many = vec!["a".to_string(); MAX_INPUTS + 1];
        let e = embedding_inputs(&many).unwrap_err();
        assert_eq!(e.code().as_str(), "over_limit");
        assert!(e.to_string().contains("256"), "{e}");
        assert!(embedding_inputs(&vec!["a".to_string(); MAX_INPUTS]).is_ok());
        let long = vec!["é".repeat(MAX_INPUT_CHARS / 2 + 1); 2];
        let e = embedding_inputs(&long).unwrap_err();
        assert!(e.to_string().contains("characters"), "{e}");
        assert_eq!(
            embedding_inputs(&["a".into(), String::new()])
                .unwrap_err()
                .code()
                .as_str(),
            "invalid_value"
        );
    }

    #[test]
    fn test_load_lists_are_unique_and_no_longer_than_the_catalog() {
        let catalog = Catalog::builtin();
        let n = catalog.models().len();
        let name = catalog.models()[0].name.clone();
        let e = test_load_list(&vec![name.clone(); n + 1], &catalog).unwrap_err();
        assert_eq!(e.code().as_str(), "over_limit");
        if n >= 2 {
            let e = test_load_list(&[name.clone(), name.clone()], &catalog).unwrap_err();
            assert!(e.to_string().contains("more than once"), "{e}");
        }
        assert!(test_load_list(&[name], &catalog).is_ok());
    }
}
