//! OpenAI's wire format: request bodies, errors, and their mapping onto plugin-api
//! requests.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use engine::{
    request::{AdapterUse, Generate, InvalidRequest, MAX_SEQUENCES},
    HostError,
};
use plugin_api::{
    text::{ChatMessage, ContentPart, GenerateRequest, SamplingParams, TextInput},
    ErrorKind, PluginError,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// Machine-readable code (`model_not_found`, ...).
    pub code: Option<&'static str>,
    /// The request field at fault.
    pub param: Option<String>,
    /// Seconds for the `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
            retry_after: None,
        }
    }

    /// 400, naming the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message.into(),
        );
        if !param.is_empty() {
            e.param = Some(param.to_owned());
        }
        e
    }

    /// 404 for an unknown model.
    pub fn model_not_found(id: &str, known: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{id}` does not exist (registered: {known})"),
        );
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    /// 429: the model's queue is full.
    pub fn queue_full(model: &str, max: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("model `{model}` has {max} requests waiting already; retry later"),
        );
        e.code = Some("queue_full");
        e.retry_after = Some(1);
        e
    }

    /// 503 while shutting down or not ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after = Some(5);
        e
    }

    /// 408: the request's time ran out.
    pub fn timeout() -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_error",
            "the request ran past its time limit (--request-timeout) and was cancelled",
        );
        e.code = Some("timeout");
        e
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 401.
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 404 for an unknown path.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no endpoint {method} {path}"),
        )
    }

    /// From a plugin's error for `model`.
    pub fn from_plugin(model: &str, e: &PluginError) -> Self {
        let msg = if e.message.starts_with("model `") {
            e.message.to_string()
        } else {
            format!("model `{model}`: {}", e.message)
        };
        match e.kind {
            ErrorKind::CONTEXT_LENGTH => {
                let mut err = Self::invalid("messages", msg);
                err.code = Some("context_length_exceeded");
                err
            }
            ErrorKind::INVALID_REQUEST | ErrorKind::INVALID_INPUT | ErrorKind::UNSUPPORTED => {
                Self::invalid("", msg)
            }
            ErrorKind::NOT_FOUND => Self::new(StatusCode::NOT_FOUND, "invalid_request_error", msg),
            ErrorKind::RESOURCE_EXHAUSTED => Self::unavailable(msg),
            _ => Self::internal(msg),
        }
    }

    /// A request the engine's rules refuse (the field as plugin-api names it, which is
    /// the OpenAI parameter's name where one exists).
    pub fn from_invalid(e: InvalidRequest) -> Self {
        Self::invalid(&e.field, e.message)
    }

    /// From a host error.
    pub fn from_host(e: &HostError) -> Self {
        match e {
            HostError::UnknownModel { id, known } => Self::model_not_found(id, known),
            HostError::WrongKind { .. } | HostError::NoPlugin { .. } => {
                Self::invalid("model", e.to_string())
            }
            HostError::Adapter { .. } => Self::invalid("adapter", e.to_string()),
            HostError::NotLocal { .. } => Self::unavailable(e.to_string()),
            HostError::OverBudget(msg) => {
                let mut err = Self::unavailable(msg.clone());
                err.code = Some("insufficient_memory");
                err.retry_after = None;
                err
            }
            HostError::Plugin { id, error, .. } => Self::from_plugin(id, error),
            _ => Self::internal(e.to_string()),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parse a JSON body into `T`, naming the field at fault.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    from_value(v, "")
}

/// Deserialize `v` (found at `prefix` in the body) into `T`, naming the field at fault.
fn from_value<T: serde::de::DeserializeOwned>(v: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let param = match (prefix, path.as_str()) {
            (p, ".") => p.to_owned(),
            ("", q) => q.to_owned(),
            (p, q) if q.starts_with('[') => format!("{p}{q}"),
            (p, q) => format!("{p}.{q}"),
        };
        let inner = e.into_inner();
        let msg = if param.is_empty() {
            format!("bad request body: {inner}")
        } else {
            format!("field `{param}`: {inner}")
        };
        ApiError::invalid(&param, msg)
    })
}

/// Split a JSON object body into one required field (`field`) and the [`Common`]
/// parameters, each parsed with the path of a bad field in its error.
fn split<T: serde::de::DeserializeOwned>(
    body: &[u8],
    field: &str,
) -> Result<(T, Common), ApiError> {
    let mut v: Value = parse(body)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid("", "the body must be a JSON object"))?;
    let inner = obj
        .remove(field)
        .ok_or_else(|| ApiError::invalid(field, format!("missing field `{field}`")))?;
    Ok((from_value(inner, field)?, from_value(v, "")?))
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of typed parts.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    /// `{"url": "data:image/png;base64,..."}` (Chat Completions) or the URL string itself
    /// (`input_image` of the Responses API).
    #[serde(default)]
    pub image_url: Option<Value>,
}

/// Largest image accepted in one content part (decoded bytes).
pub const MAX_IMAGE_BYTES: usize = 20 << 20;

/// An image part: its bytes from a `data:` URL, or — when the server fetches remote
/// images (`remote_ok`) — an `http(s)` URL to fetch. Other URLs are refused.
enum ImagePart {
    Data(ContentPart),
    Remote(String),
}

fn image_part(url: Option<&Value>, param: &str, remote_ok: bool) -> Result<ImagePart, ApiError> {
    use base64::Engine as _;
    let url = match url {
        Some(Value::String(u)) => u.as_str(),
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let bad = |m: &str| ApiError::invalid(&format!("{param}.image_url"), m.to_owned());
    if url.is_empty() {
        return Err(bad("an image part needs `image_url.url`"));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            if remote_ok {
                return Ok(ImagePart::Remote(url.to_owned()));
            }
            return Err(bad(
                "this server does not fetch remote images (start it with --allow-remote-images); send the image as data:image/...;base64,...",
            ));
        }
        return Err(bad(
            "only `data:` and http(s) URLs are accepted; send the image as data:image/...;base64,...",
        ));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(bad("a data: URL needs a `,` before its data"));
    };
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(bad("the data: URL must be base64-encoded (`;base64,`)"));
    };
    if !mime.starts_with("image/") {
        return Err(bad(&format!("`{mime}` is not an image type")));
    }
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES {
        return Err(bad(&format!(
            "the image is larger than {} MB",
            MAX_IMAGE_BYTES >> 20
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| bad(&format!("base64: {e}")))?;
    Ok(ImagePart::Data(ContentPart::image(bytes, mime)))
}

/// A request's chat messages, and the remote images still to fetch into them.
pub struct ChatInput {
    pub messages: Vec<ChatMessage>,
    pub remote: Vec<RemoteImage>,
}

/// An image part whose bytes are at `url`: `messages[message].parts[part]` holds an
/// empty image until it is fetched.
pub struct RemoteImage {
    pub message: usize,
    pub part: usize,
    pub url: String,
    /// The part's name in the request, for errors.
    pub param: String,
}

/// One chat message.
#[derive(Deserialize, Debug)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stream_options`.
#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Parameters shared by chat and text completions.
#[derive(Deserialize, Debug, Default)]
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<u32>,
    /// Extensions (llama.cpp / vLLM names).
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Extension: LoRA adapters of the model to apply — an id, `{"id": ID, "scale": S}`,
    /// or a list of these.
    pub adapter: Option<Value>,
    /// Not supported: refused when set.
    pub tools: Option<Value>,
    pub logit_bias: Option<Value>,
    pub best_of: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub common: Common,
}

impl ChatRequest {
    /// Parse a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let (messages, common) = split(body, "messages")?;
        Ok(Self { messages, common })
    }
}

/// `prompt` of a text completion.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<Value>),
}

/// `POST /v1/completions`.
#[derive(Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub common: Common,
}

impl CompletionRequest {
    /// Parse a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let (prompt, common) = split(body, "prompt")?;
        Ok(Self { prompt, common })
    }
}

/// `input` of an embedding request.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<Value>),
}

/// `POST /v1/embeddings`.
#[derive(Deserialize, Debug)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: EmbedInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
}

/// `POST /v1/models/load` and `/v1/models/unload`.
#[derive(Deserialize, Debug)]
pub struct ModelAction {
    pub model: String,
}

/// `POST /v1/adapters/load` and `/v1/adapters/unload`: an adapter by id; `load` may
/// register a new one first (`base` and `path`, optionally `scale`).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct AdapterAction {
    pub id: String,
    pub base: Option<String>,
    pub path: Option<String>,
    pub scale: Option<f32>,
}

/// The `adapter` extension field as the adapters it names.
fn adapter_uses(v: &Value) -> Result<Vec<AdapterUse>, ApiError> {
    let bad = |msg: String| ApiError::invalid("adapter", msg);
    let one = |v: &Value| -> Result<AdapterUse, ApiError> {
        match v {
            Value::String(id) => AdapterUse::new(id, None),
            Value::Object(o) => {
                let id = o.get("id").and_then(Value::as_str).ok_or_else(|| {
                    bad("`adapter`: an object needs an `id` (and may give a `scale`)".into())
                })?;
                let scale = match o.get("scale") {
                    None | Some(Value::Null) => None,
                    Some(s) => Some(s.as_f64().ok_or_else(|| {
                        bad(format!("`adapter`: the scale of `{id}` is not a number"))
                    })? as f32),
                };
                if let Some(k) = o.keys().find(|k| !["id", "scale"].contains(&k.as_str())) {
                    return Err(bad(format!("`adapter`: unknown field `{k}` (id, scale)")));
                }
                AdapterUse::new(id, scale)
            }
            _ => {
                return Err(bad(
                    "`adapter`: an id, {\"id\", \"scale\"}, or a list of these".into(),
                ))
            }
        }
        .map_err(|e| bad(e.message))
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

/// Most choices (`n`) per request.
pub const MAX_N: u32 = 16;

impl Common {
    /// Whether per-token log-probabilities were asked for.
    pub fn wants_logprobs(&self) -> bool {
        match &self.logprobs {
            Some(Value::Bool(b)) => *b,
            // Completions: `logprobs: N` (the chosen token's is always given; no alternatives).
            Some(Value::Number(_)) => true,
            _ => false,
        }
    }

    /// The plugin-api request for `inputs` (each repeated `n` times), checking every
    /// field. `default_max_tokens` applies when the client sets no limit.
    pub fn to_request(
        &self,
        inputs: Vec<TextInput>,
        default_max_tokens: u32,
    ) -> Result<Generate, ApiError> {
        let refuse = |param: &str, what: &str| {
            Err(ApiError::invalid(
                param,
                format!("`{param}` is not supported by this server ({what})"),
            ))
        };
        if self.tools.is_some() {
            return refuse("tools", "no tool calling yet");
        }
        if self.logit_bias.as_ref().is_some_and(|v| !v.is_null()) {
            return refuse("logit_bias", "not implemented");
        }
        if self.best_of.unwrap_or(1) != 1 {
            return refuse("best_of", "only 1");
        }
        if self.echo {
            return refuse("echo", "prompts are not echoed");
        }
        if self.suffix.is_some() {
            return refuse("suffix", "no fill-in-the-middle");
        }
        if self.top_logprobs.unwrap_or(0) > 0 {
            return refuse("top_logprobs", "only the chosen token's log-probability");
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N} (got {n})"),
            ));
        }
        let range = |param: &str, v: Option<f32>, lo: f32, hi: f32| match v {
            Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
                param,
                format!("`{param}` must be between {lo} and {hi} (got {x})"),
            )),
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("repetition_penalty", self.repetition_penalty, 0.0, 10.0)?;
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max_tokens);
        if max_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ));
        }
        let stop: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid(
                "stop",
                "`stop` takes at most 4 sequences",
            ));
        }
        let sequences = inputs.len() * n as usize;
        if sequences > MAX_SEQUENCES {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "{} prompt(s) × n = {n} make {sequences} sequences; one request takes at \
                     most {MAX_SEQUENCES}",
                    inputs.len()
                ),
            ));
        }
        let adapters = match &self.adapter {
            Some(v) => adapter_uses(v)?,
            None => Vec::new(),
        };
        let mut all = Vec::with_capacity(sequences);
        for input in inputs {
            for _ in 0..n {
                all.push(input.clone());
            }
        }
        Generate::new(GenerateRequest {
            inputs: all.into(),
            sampling: SamplingParams {
                // OpenAI's default temperature is 1.
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                min_p: self.min_p.unwrap_or(0.0),
                repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
                seed: self.seed.into(),
            },
            max_tokens,
            stop: stop.into_iter().map(Into::into).collect(),
            logprobs: self.wants_logprobs(),
            stream: true,
            adapter: None.into(),
            options: "".into(),
        })
        .and_then(|g| g.with_adapters(adapters))
        .map_err(ApiError::from_invalid)
    }
}

/// Chat messages as plugin-api messages for model `model`. Image parts need a
/// vision-language model (`vlm_ok`); `http(s)` image URLs are taken only if the server
/// fetches them (`remote_ok`); anything else that is not text is refused, naming the part.
pub fn chat_messages(
    msgs: &[Message],
    model: &str,
    vlm_ok: bool,
    remote_ok: bool,
) -> Result<ChatInput, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut remote = Vec::new();
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("unknown role `{other}` (system, developer, user, assistant, tool)"),
                ))
            }
        };
        let parts: Vec<ContentPart> = match &m.content {
            None => Vec::new(),
            Some(Content::Text(t)) => vec![ContentPart::text(t.as_str())],
            Some(Content::Parts(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    let param = format!("messages[{i}].content[{j}]");
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push(ContentPart::text(t.as_str())),
                        ("text", None) => {
                            return Err(ApiError::invalid(&param, "a text part needs `text`"))
                        }
                        ("image_url" | "input_image", _) if !vlm_ok => {
                            return Err(ApiError::invalid(
                                &param,
                                format!("model `{model}` reads text only: image content parts need a vision-language (vlm) model"),
                            ))
                        }
                        ("image_url" | "input_image", _) => {
                            match image_part(p.image_url.as_ref(), &param, remote_ok)? {
                                ImagePart::Data(part) => out.push(part),
                                ImagePart::Remote(url) => {
                                    remote.push(RemoteImage {
                                        message: i,
                                        part: j,
                                        url,
                                        param,
                                    });
                                    out.push(ContentPart::image(Vec::new(), ""));
                                }
                            }
                        }
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                &param,
                                format!("content parts of type `{kind}` are not supported"),
                            ))
                        }
                    }
                }
                out
            }
        };
        messages.push(ChatMessage {
            role: role.into(),
            parts: parts.into(),
        });
    }
    Ok(ChatInput { messages, remote })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::text::PartKind;

    fn parse(content: Value, vlm_ok: bool) -> Result<Vec<ChatMessage>, ApiError> {
        parse_remote(content, vlm_ok, false).map(|c| c.messages)
    }

    fn parse_remote(content: Value, vlm_ok: bool, remote_ok: bool) -> Result<ChatInput, ApiError> {
        let m: Message =
            serde_json::from_value(json!({"role": "user", "content": content})).unwrap();
        chat_messages(&[m], "smol", vlm_ok, remote_ok)
    }

    #[test]
    fn text_and_images_keep_their_order() {
        // A 1×1 PNG's first bytes are enough: the server passes bytes through, the vlm
        // plugin decodes them.
        let png = [0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let url = format!(
            "data:image/png;base64,{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png)
        );
        let msgs = parse(
            json!([
                {"type": "text", "text": "Compare "},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": " with "},
                {"type": "input_image", "image_url": url},
            ]),
            true,
        )
        .unwrap();
        let kinds: Vec<PartKind> = msgs[0].parts.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PartKind::TEXT,
                PartKind::IMAGE,
                PartKind::TEXT,
                PartKind::IMAGE
            ]
        );
        assert_eq!(msgs[0].parts[1].data.as_slice(), png);
        assert_eq!(msgs[0].parts[1].mime.as_str(), "image/png");
        assert_eq!(msgs[0].joined_text(), "Compare  with ");
    }

    #[test]
    fn bad_image_parts_name_the_part() {
        let msg = |content: Value, vlm_ok: bool| {
            let e = parse(content, vlm_ok).expect_err("refused");
            format!("{} {}", e.param.unwrap_or_default(), e.message)
        };
        let remote =
            json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]);
        assert!(msg(remote.clone(), true).contains("messages[0].content[0].image_url"));
        assert!(msg(remote.clone(), true).contains("does not fetch remote images"));
        assert!(msg(remote.clone(), true).contains("--allow-remote-images"));
        // Allowed: left to fetch, in its place.
        let c = parse_remote(
            json!([{"type": "text", "text": "a"}, remote[0].clone()]),
            true,
            true,
        )
        .unwrap();
        assert_eq!(c.remote.len(), 1);
        assert_eq!((c.remote[0].message, c.remote[0].part), (0, 1));
        assert_eq!(c.remote[0].url, "https://example.com/a.png");
        assert_eq!(c.messages[0].parts[1].kind, PartKind::IMAGE);
        let ftp = json!([{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]);
        assert!(parse_remote(ftp, true, true).is_err());
        assert!(msg(remote.clone(), false).contains("vision-language"));
        assert!(msg(remote, false).contains("model `smol`"));
        let not_image =
            json!([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]);
        assert!(msg(not_image, true).contains("not an image type"));
        let broken =
            json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]);
        assert!(msg(broken, true).contains("base64"));
    }
}
