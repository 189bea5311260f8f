//! Engines: the types of mount that keyd can serve, and the trait they share.
//!
//! Engine operations run on signing threads, never on the async runtime, so
//! they may block on SQLite and on key generation.
#![forbid(unsafe_code)]

pub mod ca;
pub mod registry;

use metacrypt_protocol::{CaRequest, CaResponse, Caller, ErrorBody, MountConfig};

use crate::barrier::MountStore;

/// A request routed to a mounted engine.
#[derive(Debug)]
pub enum EngineRequest {
    Ca(CaRequest),
}

/// The response of an engine.
#[derive(Debug)]
pub enum EngineResponse {
    Ca(CaResponse),
}

/// The sender of a request, for engines that record it.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    pub caller: Option<&'a Caller>,
    pub trace_id: &'a str,
}

/// A mounted engine instance, holding its keys in locked memory while the
/// service is unsealed. Dropping it zeroizes those keys.
pub trait Engine: Send + Sync {
    fn engine_type(&self) -> &'static str;

    /// Handles one request. `store` is the barrier view of this mount,
    /// encrypted under the mount's DEK.
    fn handle(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        request: EngineRequest,
    ) -> Result<EngineResponse, ErrorBody>;
}

/// Creates and loads engines of one type.
pub trait EngineFactory: Send + Sync {
    fn engine_type(&self) -> &'static str;

    /// Creates the engine's state at mount time (for the CA engine, the
    /// root CA) and writes it to `store`.
    fn initialize(
        &self,
        store: &MountStore,
        config: &MountConfig,
    ) -> Result<Box<dyn Engine>, ErrorBody>;

    /// Loads an existing mount's keys from `store` after unseal.
    fn load(&self, store: &MountStore) -> Result<Box<dyn Engine>, ErrorBody>;
}

/// Returns a factory for each engine type this build of keyd supports.
pub fn factories() -> Vec<Box<dyn EngineFactory>> {
    vec![Box::new(ca::CaEngineFactory)]
}
