//! Progress and cancellation for long work that is not a token stream: diffusion steps,
//! model conversions, adapter fusing.

use crate::text::StreamControl;
use abi_stable::{
    sabi_trait,
    sabi_types::RMut,
    std_types::{RString, RVec},
    StableAbi,
};

/// One progress report.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ProgressEvent {
    /// What is running, one word or a short phrase (`"denoise"`, `"decode"`,
    /// `"quantize"`, `"write"`).
    pub stage: RString,
    /// Steps done in this stage.
    pub done: u64,
    /// Steps in this stage; 0 if unknown.
    pub total: u64,
    /// One line for people (the tensor being written, the sampler step), may be empty.
    pub message: RString,
    /// An encoded preview (PNG) of the result so far, when the plugin offers one.
    pub preview: RVec<u8>,
}

/// The host's receiver of progress reports. Returning [`StreamControl::Stop`] cancels
/// the call: the plugin stops at the next safe point, leaves nothing half-written and
/// answers [`ErrorKind::CANCELLED`](crate::ErrorKind::CANCELLED).
#[sabi_trait]
pub trait ProgressSink {
    /// Called as work advances (plugins report at least every step of `total`, and
    /// often enough for a cancel to take effect within about a second).
    #[sabi(last_prefix_field)]
    fn on_progress(&mut self, event: &ProgressEvent) -> StreamControl;
}

/// A borrowed [`ProgressSink`] crossing the ABI.
pub type ProgressSinkMut<'a> = ProgressSink_TO<'a, RMut<'a, ()>>;
