//! The model catalog: which models an agent may load, from a TOML file or the built-in default.

use std::{collections::HashSet, path::Path};

use serde::Deserialize;

use super::ModelSpec;

/// The built-in catalog (`default-catalog.toml`).
const DEFAULT_CATALOG: &str = include_str!("default-catalog.toml");

/// The models an agent may load, in catalog order.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    models: Vec<ModelSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "model")]
    models: Vec<ModelSpec>,
}

/// A catalog that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("catalog {origin} is malformed: {message}")]
    Parse {
        /// The file, or `built-in`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or a name is repeated.
    #[error("catalog {origin}: {message}")]
    Invalid {
        /// The file, or `built-in`.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_CATALOG, "built-in").expect("the built-in catalog is valid")
    }

    /// Reads a catalog file.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks catalog TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| CatalogError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if file.models.is_empty() {
            return Err(invalid("it lists no model".into()));
        }
        let mut seen = HashSet::new();
        for model in &file.models {
            if !is_dns_label(&model.name) {
                return Err(invalid(format!(
                    "model name {:?} is not DNS-1123-like (lowercase letters, digits, '-', '.'; at most 63)",
                    model.name
                )));
            }
            if !seen.insert(model.name.as_str()) {
                return Err(invalid(format!("model {:?} is listed twice", model.name)));
            }
            model
                .kind
                .check()
                .map_err(|m| invalid(format!("model {:?}: {m}", model.name)))?;
        }
        Ok(Self {
            models: file.models,
        })
    }

    /// Every model, in catalog order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// The model of that name.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Lowercase letters, digits, '-' and '.', starting and ending with a letter or digit.
pub(crate) fn is_dns_label(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| ok_char(c) || c == '-' || c == '.')
        && name.starts_with(ok_char)
        && name.ends_with(ok_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses() {
        let c = Catalog::builtin();
        assert!(c.get("synthetic-small").is_some());
        assert!(c.get("all-minilm-l6-v2").is_some());
    }

    #[test]
    fn bad_catalogs_name_the_problem() {
        let dup = "[[model]]\nname='a'\nkind='synthetic'\nparams=1000000\n[[model]]\nname='a'\nkind='synthetic'\nparams=1000000\n";
        assert!(
            Catalog::parse(dup, "t")
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let upper = "[[model]]\nname='A'\nkind='synthetic'\nparams=1000000\n";
        assert!(
            Catalog::parse(upper, "t")
                .unwrap_err()
                .to_string()
                .contains("DNS-1123")
        );
        let unknown = "[[model]]\nname='a'\nkind='synthetic'\nparams=1000000\nbogus=1\n";
        assert!(
            Catalog::parse(unknown, "t")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        let kind = "[[model]]\nname='a'\nkind='gpt'\n";
        assert!(
            Catalog::parse(kind, "t")
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        let tiny = "[[model]]\nname='a'\nkind='synthetic'\nparams=10\n";
        assert!(
            Catalog::parse(tiny, "t")
                .unwrap_err()
                .to_string()
                .contains("params")
        );
        assert!(Catalog::parse("", "t").is_err());
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("all-minilm-l6-v2"));
        assert!(is_dns_label("a.b"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
