//! `metacrypt-frontd`: the network-facing half of Metacrypt.
//!
//! frontd terminates HTTPS, authenticates callers through MCIAS, decides
//! what each caller may do, and forwards every operation to keyd over keyd's
//! front Unix socket. It stores no key but its own TLS key and has no
//! database.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod authz;
pub mod error;
pub mod keyd;
pub mod mcias;
pub mod sandbox;
mod secret_buf;
pub mod server;
pub mod tls;

use std::sync::Arc;

/// State shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub keyd: keyd::KeydPool,
    pub mcias: Arc<mcias::MciasClient>,
    /// Maximum size of a request body in bytes.
    pub max_body_bytes: usize,
    /// Memory shared by the request bodies buffered at one time.
    pub body_budget: api::BodyBudget,
}

impl AppState {
    /// Creates the state with a body budget sized for `max_body_bytes`.
    pub fn new(
        keyd: keyd::KeydPool,
        mcias: Arc<mcias::MciasClient>,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            keyd,
            mcias,
            max_body_bytes,
            body_budget: api::BodyBudget::for_body_limit(max_body_bytes),
        }
    }
}
