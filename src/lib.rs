//! # strata
//!
//! Group communication from small, composable protocol layers, in the
//! tradition of Isis, Horus, Ensemble and JGroups. This facade re-exports the
//! three workspace crates so an application depends on `strata` alone:
//!
//! - the composition machinery ([`Layer`], [`Context`], [`Msg`], events,
//!   stack strings, [`Registry`], the sans-IO [`Stack`]) from `strata-stack`;
//! - the tokio [`runtime`] ([`runtime::Endpoint`], [`runtime::Group`],
//!   [`runtime::Events`]);
//! - the built-in [`layers`] and the [`transport`]s (in-process, UDP, the
//!   deterministic simulator).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use strata::runtime::{Endpoint, JoinConfig};
//! use strata::transport::udp::UdpTransport;
//!
//! let udp = UdpTransport::bind("127.0.0.1:7000".parse()?).await?;
//! let endpoint = Endpoint::new(udp, Arc::new(strata::builtin_registry()));
//! let mut cfg = JoinConfig::new("chat", "FRAG:NAK");
//! cfg.members = vec![strata::MemberId::new("127.0.0.1:7000".parse()?, 0), strata::MemberId::new("127.0.0.1:7001".parse()?, 0)];
//! let (group, mut events) = endpoint.join(cfg).await?;
//! group.cast(bytes::Bytes::from_static(b"hello")).await?;
//! while let Some(ev) = events.next().await {
//!     println!("{ev:?}");
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use strata_stack::*;

/// The built-in protocol layers (one module per layer).
pub use strata_layers as layers;
/// Transports: in-process, UDP, and the deterministic simulator.
pub use strata_transport as transport;

/// A registry holding every built-in layer; register your own on it.
pub fn builtin_registry() -> Registry {
    strata_layers::builtin()
}
