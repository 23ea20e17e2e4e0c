//! The layer contract: what a stack string names (a [`LayerDescriptor`]) and
//! what runs (a [`Layer`]).

use crate::context::Context;
use crate::event::{Down, Up};
use std::fmt;

/// Names a timer of one layer. A layer usually defines a small enum of keys
/// and converts it; setting a key again replaces its deadline.
pub type TimerKey = u32;

/// A running protocol layer: a deterministic state machine. It sees events
/// and a [`Context`], never a clock, a socket or a thread.
///
/// The defaults forward every event unchanged, so a layer overrides only what
/// it handles, and its `match` ends with an arm that forwards the rest.
pub trait Layer: Send + 'static {
    /// Called once when the stack is built, bottom layer first.
    fn init(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// An event from the layer above (or the application).
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        cx.down(ev);
    }

    /// An event from the layer below (or the network).
    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        cx.up(ev);
    }

    /// A timer this layer armed with [`Context::set_timer`] is due.
    fn timeout(&mut self, cx: &mut Context<'_>, key: TimerKey) {
        let _ = (cx, key);
    }

    /// The largest message this layer accepts from above, if the layer itself
    /// sets the bound (FRAG: its `max_msg_size`). `None`, the default, means
    /// whatever fits the layer below once this layer's header is added. The
    /// engine refuses larger casts and sends at the top of the stack, before
    /// any layer has numbered or buffered them.
    fn max_message_len(&self) -> Option<usize> {
        None
    }

    /// Appends the layer's counters and gauges (sent, delivered, buffer sizes...).
    /// Drops counted through [`Context::drop_malformed`] are added by the engine.
    fn stats(&self, out: &mut Stats) {
        let _ = out;
    }
}

/// Counters and gauges of one layer, in the order the layer reports them.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `(name, value)` pairs.
    pub entries: Vec<(&'static str, u64)>,
}

impl Stats {
    /// Records a value.
    pub fn add(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.entries.push((name, value));
        self
    }

    /// The value recorded under `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Properties a layer provides to the layers above it, or requires from the
/// layers below it. The builder refuses a stack where a requirement is unmet.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct Props(u32);

impl Props {
    /// Nothing.
    pub const NONE: Props = Props(0);
    /// Messages of any size (up to the stack's limit) get through.
    pub const LARGE_MESSAGES: Props = Props(1 << 0);
    /// No message between live members is lost.
    pub const RELIABLE: Props = Props(1 << 1);
    /// Messages from one sender are delivered in the order sent.
    pub const FIFO: Props = Props(1 << 2);
    /// Causal order.
    pub const CAUSAL: Props = Props(1 << 3);
    /// One delivery order at every member.
    pub const TOTAL: Props = Props(1 << 4);
    /// Views agreed by the members (virtual synchrony).
    pub const MEMBERSHIP: Props = Props(1 << 5);
    /// Uniform, durable delivery.
    pub const UNIFORM: Props = Props(1 << 6);
    /// Only members can read or forge traffic.
    pub const CONFIDENTIAL: Props = Props(1 << 7);

    const NAMES: [(Props, &'static str); 8] = [
        (Props::LARGE_MESSAGES, "large_messages"),
        (Props::RELIABLE, "reliable"),
        (Props::FIFO, "fifo"),
        (Props::CAUSAL, "causal"),
        (Props::TOTAL, "total"),
        (Props::MEMBERSHIP, "membership"),
        (Props::UNIFORM, "uniform"),
        (Props::CONFIDENTIAL, "confidential"),
    ];

    /// Both sets.
    pub const fn union(self, other: Props) -> Props {
        Props(self.0 | other.0)
    }

    /// Whether every property of `other` is in `self`.
    pub const fn contains(self, other: Props) -> bool {
        self.0 & other.0 == other.0
    }

    /// The properties of `self` not in `other`.
    pub const fn minus(self, other: Props) -> Props {
        Props(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The property names, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().filter(move |(p, _)| self.contains(*p)).map(|(_, n)| n)
    }
}

impl fmt::Display for Props {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "-");
        }
        let names: Vec<_> = self.names().collect();
        write!(f, "{}", names.join(","))
    }
}

impl fmt::Debug for Props {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Props({self})")
    }
}

/// The type of a layer parameter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// An unsigned integer within `min..=max`.
    U64 {
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// `true` or `false`.
    Bool,
    /// Free text (a path, a name). May not contain `,` or `)`.
    Str,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::U64 { min, max } => write!(f, "integer {min}..={max}"),
            ParamKind::Bool => write!(f, "true|false"),
            ParamKind::Str => write!(f, "text"),
        }
    }
}

/// Declares one parameter of a layer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Its name in stack strings, with its unit (`frag_size`, `retransmit_ms`).
    pub name: &'static str,
    /// Its type and range.
    pub kind: ParamKind,
    /// The value used when the stack string does not set it.
    pub default: &'static str,
    /// One line of documentation.
    pub doc: &'static str,
    /// Whether every member must use the same value (it changes the wire
    /// format or the protocol). Such values enter the stack fingerprint;
    /// local ones (a log directory) do not.
    pub wire: bool,
}

/// A parameter's value after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    /// An integer.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// Text.
    Str(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::U64(v) => write!(f, "{v}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v}"),
        }
    }
}

impl ParamValue {
    /// Parses `text` as a value of `kind`, or says why it is not one.
    pub fn parse(kind: ParamKind, text: &str) -> Result<ParamValue, String> {
        match kind {
            ParamKind::U64 { min, max } => {
                let v: u64 = text.parse().map_err(|_| format!("expected an integer, got `{text}`"))?;
                if v < min || v > max {
                    return Err(format!("{v} is outside {min}..={max}"));
                }
                Ok(ParamValue::U64(v))
            }
            ParamKind::Bool => match text {
                "true" | "1" | "yes" => Ok(ParamValue::Bool(true)),
                "false" | "0" | "no" => Ok(ParamValue::Bool(false)),
                _ => Err(format!("expected true or false, got `{text}`")),
            },
            ParamKind::Str => {
                if text.is_empty() {
                    return Err("expected a non-empty value".into());
                }
                Ok(ParamValue::Str(text.to_string()))
            }
        }
    }
}

/// The validated parameters of one layer: every declared parameter has a
/// value (given or default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    values: Vec<(&'static str, ParamValue)>,
}

impl Params {
    /// Parameters from `(name, value)` pairs (normally made by the stack-string parser).
    pub fn from_pairs(values: Vec<(&'static str, ParamValue)>) -> Self {
        Params { values }
    }

    /// The defaults of `specs`.
    pub fn defaults(specs: &[ParamSpec]) -> Result<Params, String> {
        let mut values = Vec::with_capacity(specs.len());
        for s in specs {
            // An empty default of a text parameter means "not set".
            if s.kind == ParamKind::Str && s.default.is_empty() {
                values.push((s.name, ParamValue::Str(String::new())));
                continue;
            }
            values.push((s.name, ParamValue::parse(s.kind, s.default).map_err(|e| format!("default of {}: {e}", s.name))?));
        }
        Ok(Params { values })
    }

    /// The value of `name`, if declared.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets `name` (used by the parser and by tests).
    pub fn set(&mut self, name: &'static str, value: ParamValue) {
        match self.values.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name, value)),
        }
    }

    /// An integer parameter. Asking for an undeclared name or the wrong type
    /// is a bug in the layer's own code, hence the panic.
    pub fn u64(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(ParamValue::U64(v)) => *v,
            other => panic!("layer asked for integer parameter {name}, found {other:?}"),
        }
    }

    /// A boolean parameter (see [`Params::u64`] on misuse).
    pub fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            Some(ParamValue::Bool(v)) => *v,
            other => panic!("layer asked for boolean parameter {name}, found {other:?}"),
        }
    }

    /// A text parameter (see [`Params::u64`] on misuse).
    pub fn str(&self, name: &str) -> &str {
        match self.get(name) {
            Some(ParamValue::Str(v)) => v,
            other => panic!("layer asked for text parameter {name}, found {other:?}"),
        }
    }

    /// All values in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ParamValue)> {
        self.values.iter().map(|(n, v)| (*n, v))
    }
}

/// What a stack string names: everything the builder, `strata layers` and the
/// docs need to know about a layer, and how to construct it.
#[derive(Copy, Clone)]
pub struct LayerDescriptor {
    /// The name in stack strings, in capitals (`FRAG`).
    pub name: &'static str,
    /// One line: what the layer guarantees.
    pub summary: &'static str,
    /// Properties the layers below must provide.
    pub requires: Props,
    /// Properties this layer adds.
    pub provides: Props,
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// The most header bytes it adds to one message, for these parameters.
    pub max_header_len: fn(&Params) -> usize,
    /// Builds a running layer; an `Err` explains a bad combination of values.
    pub build: fn(&Params) -> Result<Box<dyn Layer>, String>,
}

impl fmt::Debug for LayerDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerDescriptor").field("name", &self.name).field("requires", &self.requires).field("provides", &self.provides).finish_non_exhaustive()
    }
}
