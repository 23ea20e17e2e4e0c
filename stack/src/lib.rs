//! # strata-stack
//!
//! The composition machinery of strata: the [`Layer`] trait and its
//! [`LayerDescriptor`], the [`Down`]/[`Up`] events, the zero-copy message
//! buffer [`Msg`], stack strings ([`spec`]) and the [`Registry`], and the
//! sans-IO engine [`Stack`]. With the `runtime` feature, a tokio driver
//! ([`runtime`]) runs stacks over real transports.
//!
//! No protocol logic lives here; the layers are in `strata-layers`.
#![warn(missing_docs)]
// Stack-building errors carry the stack string and a hint for a readable
// message; they occur once per join, never on a message path.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod context;
pub mod engine;
pub mod event;
pub mod harness;
pub mod layer;
pub mod msg;
pub mod registry;
pub mod rng;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod spec;
pub mod storage;
pub mod time;
pub mod view;
pub mod window;

pub use codec::{DecodeResult, Malformed, Reader, Writer};
pub use context::Context;
pub use engine::{BuildError, Dest, LayerStats, Refused, Stack, StackConfig, Transmit};
pub use event::{AppEvent, Delivery, Down, Problem, QueryOutcome, QueryResult, SafeTag, Up, Want};
pub use layer::{Layer, LayerDescriptor, ParamKind, ParamSpec, ParamValue, Params, Props, Stats, TimerKey};
pub use msg::{Msg, MsgFlags, Order};
pub use registry::{Registry, RegistryError, ResolvedStack};
pub use rng::Rng;
pub use spec::{SpecError, SpecErrorKind};
pub use std::time::Duration;
pub use storage::{CrashTail, FsStorage, LogFile, MemStorage, Storage};
pub use time::Instant;
pub use view::{MemberId, View, ViewId};
pub use window::SendWindow;
