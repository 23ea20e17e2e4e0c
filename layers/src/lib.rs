//! # strata-layers
//!
//! strata's built-in protocol layers. Each is a sans-IO state machine in a
//! module of its own, opening with an essay on what it guarantees, its header
//! and its parameters. This crate depends on `strata-stack` only: no tokio, no
//! sockets, no clocks, so the same code runs in the simulator, in benches and
//! over real networks.
#![warn(missing_docs)]

pub mod debug;
pub mod frag;
pub mod nak;

use strata_stack::{LayerDescriptor, Registry};

/// Every built-in layer's descriptor, in the order `strata layers` lists them.
pub const BUILTIN: &[LayerDescriptor] = &[frag::FRAG, nak::NAK, debug::loss::LOSS];

/// A registry holding every built-in layer. Register your own layers on it
/// with [`Registry::register`].
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    for d in BUILTIN {
        r.register(*d).expect("built-in layer names are unique and valid");
    }
    r
}
