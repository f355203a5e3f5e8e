//! Opening a plugin library: the checks the host makes, shared with [`crate::testing`]
//! (feature `loader`).
//!
//! abi_stable checks the library's plugin-api version (the major is the API version)
//! and the layout of everything reachable from the root module; then `api_version` and
//! the descriptor are checked. A plugin built against an older minor of the same API
//! (fewer root fields, fewer `Model` methods) is accepted: see [`open`].

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use plugin_api::{PluginDescriptor, PluginModRef, API_VERSION};
use std::path::Path;

/// Open the plugin library at `path` and check it; its root module and descriptor, or
/// one line saying why it is refused.
pub fn open(path: &Path) -> Result<(PluginModRef, PluginDescriptor), String> {
    let header = lib_header_from_path(path).map_err(|e| describe(&e))?;
    let module = match header.init_root_module::<PluginModRef>() {
        Ok(m) => m,
        // abi_stable accepts a root module with at least the host's fields (a plugin of
        // the same or a newer minor). A plugin built against an older minor has fewer:
        // it is compatible when the host's layout extends the plugin's — the same check
        // with the roles swapped: every field and method the plugin has matches the
        // host's, recursively; the host reads the ones it lacks as `None` / defaults.
        Err(LibraryError::AbiInstability(_)) if extends_plugin_layout(header) => {
            // SAFETY: the layout was checked just above, in the direction that holds for
            // an older plugin: the plugin's root module is a prefix of the host's.
            unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
                .map_err(|e| describe(&e))?
        }
        Err(e) => return Err(describe(&e)),
    };
    let version = module.api_version();
    if version != API_VERSION {
        return Err(format!(
            "built for plugin API version {version}, this host speaks version {API_VERSION}; rebuild the plugin"
        ));
    }
    let descriptor = (module.descriptor())()
        .into_result()
        .map_err(|e| format!("descriptor failed: {e}"))?;
    if descriptor.name.is_empty() {
        return Err("descriptor has an empty plugin name".into());
    }
    Ok((module, descriptor))
}

/// Whether the host's root-module layout extends the plugin's (an older minor of the
/// same API: fewer root fields, fewer trait methods, everything else identical).
fn extends_plugin_layout(header: &abi_stable::library::LibHeader) -> bool {
    use abi_stable::{abi_stability::abi_checking::check_layout_compatibility, StableAbi};
    header
        .root_mod_consts()
        .layout()
        .into_option()
        .is_some_and(|plugin| {
            check_layout_compatibility(plugin, <PluginModRef as StableAbi>::LAYOUT).is_ok()
        })
}

/// One readable line for an abi_stable load error.
fn describe(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!("cannot open library: {err}"),
        LibraryError::GetSymbolError { .. } => format!(
            "not an MLXEngine plugin (no `{}` root module symbol)",
            PluginModRef::NAME
        ),
        LibraryError::IncompatibleVersionNumber {
            library_name,
            expected_version,
            actual_version,
        } => {
            // plugin-api's major version is the API version; 0.x releases were API 1.
            let api = |v: &abi_stable::sabi_types::VersionNumber| v.major.max(1);
            format!(
                "built for plugin API {} (plugin-api {actual_version}), this host speaks plugin API {} \
                 (plugin-api {expected_version}, {library_name}); rebuild the plugin against plugin-api {}",
                api(actual_version),
                api(expected_version),
                expected_version.major
            )
        }
        LibraryError::AbiInstability(_) => {
            "ABI layout of the plugin does not match this host (built against another plugin-api)"
                .into()
        }
        LibraryError::InvalidAbiHeader(h) => format!("incompatible abi_stable header: {h:?}"),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("load error")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_types::VersionNumber;

    #[test]
    fn an_api_1_plugin_is_refused_naming_both_api_versions() {
        // What abi_stable reports for a plugin built against plugin-api 0.1.0 (API 1).
        let e = LibraryError::IncompatibleVersionNumber {
            library_name: PluginModRef::NAME,
            expected_version: VersionNumber::new(PluginModRef::VERSION_STRINGS).unwrap(),
            actual_version: VersionNumber {
                major: 0,
                minor: 1,
                patch: 0,
            },
        };
        let msg = describe(&e);
        assert!(
            msg.contains("built for plugin API 1 (plugin-api 0.1.0)")
                && msg.contains(&format!("this host speaks plugin API {API_VERSION}")),
            "{msg}"
        );
        // The interface crate's major version is the API version.
        assert_eq!(
            VersionNumber::new(PluginModRef::VERSION_STRINGS)
                .unwrap()
                .major,
            API_VERSION
        );
    }
}
