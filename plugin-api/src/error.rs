use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong, as an open set of codes (unknown codes from newer plugins are kept).
#[repr(transparent)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The request was malformed (bad parameter, empty input, ...).
    pub const INVALID_REQUEST: Self = Self(1);
    /// A file, model or adapter the request names does not exist.
    pub const NOT_FOUND: Self = Self(2);
    /// The plugin or model cannot do this (kind, feature, format, quantization type).
    pub const UNSUPPORTED: Self = Self(3);
    /// A model could not be loaded (bad config, missing or mismatched weights).
    pub const LOAD: Self = Self(4);
    /// Not enough memory, or another resource ran out.
    pub const RESOURCE_EXHAUSTED: Self = Self(5);
    /// The caller cancelled the request.
    pub const CANCELLED: Self = Self(6);
    /// The plugin panicked; the call was abandoned and the host keeps running.
    pub const PANIC: Self = Self(7);
    /// Any other failure inside the plugin or its compute library.
    pub const INTERNAL: Self = Self(8);
    /// The input (prompt and requested tokens, images) does not fit the model's context.
    pub const CONTEXT_LENGTH: Self = Self(9);
    /// The request is well-formed but its data is not usable: an image that does not
    /// decode, a token id outside the vocabulary, a part kind the model cannot read.
    pub const INVALID_INPUT: Self = Self(10);
    /// An allocation failed (device or host memory); the model may need a smaller
    /// dtype, quantization or context. Unlike `RESOURCE_EXHAUSTED`, waiting won't help.
    pub const OUT_OF_MEMORY: Self = Self(11);

    /// A short lowercase name (`"unsupported"`, ...), `"unknown(N)"` for codes this
    /// version does not know.
    pub fn name(self) -> String {
        match self {
            Self::INVALID_REQUEST => "invalid request".into(),
            Self::NOT_FOUND => "not found".into(),
            Self::UNSUPPORTED => "unsupported".into(),
            Self::LOAD => "load error".into(),
            Self::RESOURCE_EXHAUSTED => "resource exhausted".into(),
            Self::CANCELLED => "cancelled".into(),
            Self::PANIC => "plugin panic".into(),
            Self::INTERNAL => "internal error".into(),
            Self::CONTEXT_LENGTH => "context length exceeded".into(),
            Self::INVALID_INPUT => "invalid input".into(),
            Self::OUT_OF_MEMORY => "out of memory".into(),
            Self(n) => format!("unknown({n})"),
        }
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The error every ABI call can return: a kind and a human-readable message.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct PluginError {
    /// Category, for the host to map to exit codes and HTTP statuses.
    pub kind: ErrorKind,
    /// One line naming the file, key, model or field involved.
    pub message: RString,
}

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
        }
    }

    /// `UNSUPPORTED`: "`what` is not supported by this plugin".
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            ErrorKind::UNSUPPORTED,
            format!("{what} is not supported by this plugin"),
        )
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

impl std::error::Error for PluginError {}
