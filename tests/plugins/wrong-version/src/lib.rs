//! Test fixture: the right ABI layout, but `api_version` 999. The host must refuse it
//! by the version check alone, naming both numbers.

use abi_stable::{export_root_module, prefix_type::PrefixTypeTrait, std_types::RResult};
use plugin_api::{
    progress::ProgressSinkMut,
    quant::{QuantizeReport, QuantizeRequest},
    EstimateRequest, LoadRequest, MemoryEstimate, ModelBox, PluginDescriptor, PluginError,
    PluginMod, PluginModRef, Probe, ProbeRequest,
};

extern "C" fn descriptor() -> RResult<PluginDescriptor, PluginError> {
    RResult::RErr(PluginError::unsupported("descriptor"))
}
extern "C" fn probe(_: &ProbeRequest) -> RResult<Probe, PluginError> {
    RResult::RErr(PluginError::unsupported("probe"))
}
extern "C" fn load_model(_: &LoadRequest) -> RResult<ModelBox, PluginError> {
    RResult::RErr(PluginError::unsupported("load"))
}
extern "C" fn estimate(_: &EstimateRequest) -> RResult<MemoryEstimate, PluginError> {
    RResult::RErr(PluginError::unsupported("estimate"))
}
extern "C" fn convert(
    _: &QuantizeRequest,
    _: ProgressSinkMut<'_>,
) -> RResult<QuantizeReport, PluginError> {
    RResult::RErr(PluginError::unsupported("convert"))
}

/// Root module claiming API version 999.
#[export_root_module]
pub fn root() -> PluginModRef {
    PluginMod {
        api_version: 999,
        descriptor,
        probe,
        load_model,
        estimate,
        convert,
    }
    .leak_into_prefix()
}
