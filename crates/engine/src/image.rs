//! Image generation (`diffusion` kind): the checked request to the plugin that serves the
//! model, progress reports to the caller, which may cancel.

use crate::{convert::ClosureProgress, request::Image, Engine, HostError};
use abi_stable::{sabi_trait::TD_Opaque, sabi_types::RMut};
use plugin_api::{
    image::ImageResponse,
    progress::{ProgressEvent, ProgressSink_TO},
    text::StreamControl,
    ErrorKind, Features, ModelKind,
};

impl Engine {
    /// Images for `req` from model `id` (on provider `backend` if named). `on_progress`
    /// sees a report per denoising step and may stop the run ([`HostError::Cancelled`]).
    pub fn generate_image(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &Image,
        on_progress: &mut dyn FnMut(&ProgressEvent) -> StreamControl,
    ) -> Result<ImageResponse, HostError> {
        let m = self.load_on(id, ModelKind::DIFFUSION, Features::DIFFUSION, backend)?;
        let mut progress = ClosureProgress(on_progress);
        let sink = ProgressSink_TO::from_ptr(RMut::new(&mut progress), TD_Opaque);
        let result = m.model.generate_image(req, sink).into_result();
        self.touch(&m.key);
        result.map_err(|error| {
            if error.kind == ErrorKind::CANCELLED {
                HostError::Cancelled { id: id.to_owned() }
            } else {
                HostError::Plugin {
                    id: id.to_owned(),
                    plugin: m.plugin.clone(),
                    error,
                }
            }
        })
    }
}
