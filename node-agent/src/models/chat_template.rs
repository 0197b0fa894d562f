//! A checkpoint's chat template (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`) rendered with minijinja as transformers renders it with Jinja2:
//! blocks trimmed and left-stripped, Python's string methods, `raise_exception`,
//! `strftime_now`, the tokenizer's special tokens as variables, and the generation prompt.

use std::{collections::BTreeMap, path::Path};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

/// A compiled template with the special tokens it may refer to.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    tokens: BTreeMap<&'static str, String>,
}

/// The special tokens transformers passes to templates.
const SPECIAL: [&str; 6] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
];

/// A token in `tokenizer_config.json`: a string, or an object with `content`.
fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// The template's source: `chat_template.jinja` first, then `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates of which `default` is taken).
fn source(dir: &Path, config: &Json) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(text);
    }
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// `tokenizer_config.json` of `dir`, or an empty object.
pub(crate) fn tokenizer_config(dir: &Path) -> Result<Json, String> {
    let path = dir.join("tokenizer_config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
        }
        Err(_) => Ok(Json::Object(Default::default())),
    }
}

impl ChatTemplate {
    /// The template of the checkpoint in `dir`, if it has one; an error if it does not compile.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, String> {
        let config = tokenizer_config(dir)?;
        let Some(source) = source(dir, &config) else {
            return Ok(None);
        };
        let tokens = SPECIAL
            .iter()
            .filter_map(|&name| Some((name, token_text(config.get(name)?)?)))
            .collect();
        Self::compile(source, tokens)
            .map(Some)
            .map_err(|e| format!("{}: its chat template does not compile: {e}", dir.display()))
    }

    fn compile(source: String, tokens: BTreeMap<&'static str, String>) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| {
            jiff::Zoned::now().strftime(&format).to_string()
        });
        env.add_template_owned("chat", source)?;
        Ok(Self { env, tokens })
    }

    /// The prompt for `messages` (objects with `role` and `content`), ending with the
    /// assistant's turn. A template that raises gives its message.
    pub(crate) fn render(&self, messages: &[Json]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let mut context: BTreeMap<&str, Value> = self
            .tokens
            .iter()
            .map(|(&k, v)| (k, Value::from(v.as_str())))
            .collect();
        context.insert("messages", Value::from_serialize(messages));
        context.insert("add_generation_prompt", Value::from(true));
        template.render(context).map_err(|e| {
            // A `raise_exception` carries the template's own words; other errors say where.
            match e.detail() {
                Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
                _ => format!("the chat template failed: {e}"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        let tokens = [
            ("bos_token", "<s>".to_string()),
            ("eos_token", "</s>".into()),
        ];
        ChatTemplate::compile(source.into(), tokens.into_iter().collect()).unwrap()
    }

    #[test]
    fn renders_with_python_methods_and_trimmed_blocks() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}\n  {{ m['role'] }}: {{ m['content'].strip() }}\n{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}",
        );
        let messages = [serde_json::json!({"role": "user", "content": "  hi  "})];
        assert_eq!(t.render(&messages).unwrap(), "<s>  user: hi\nassistant:");
    }

    #[test]
    fn raise_exception_gives_the_templates_message() {
        let t = template("{{ raise_exception('roles must alternate') }}");
        assert_eq!(t.render(&[]).unwrap_err(), "roles must alternate");
    }
}
