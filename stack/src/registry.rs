//! The registry: stack-string names to layer descriptors. Built-in layers and
//! user layers are registered the same way and are equally first-class.

use crate::codec::fnv1a64;
use crate::layer::{LayerDescriptor, ParamValue, Params, Props};
use crate::spec::{parse, SpecError, SpecErrorKind};

/// Why a descriptor could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A layer of that name is already registered.
    #[error("a layer named {0} is already registered")]
    Duplicate(String),
    /// The name is not usable in a stack string.
    #[error("layer name `{0}` is not usable in stack strings: use 1 to 32 letters, digits, `_` or `-`")]
    BadName(String),
    /// A parameter's default does not parse as its own type.
    #[error("layer {layer}: {reason}")]
    BadDefault {
        /// The layer.
        layer: String,
        /// Why.
        reason: String,
    },
}

/// Layer descriptors by name.
#[derive(Clone, Default, Debug)]
pub struct Registry {
    layers: Vec<LayerDescriptor>,
}

/// A stack string checked against a registry: the descriptors bottom first,
/// each with its validated parameters.
#[derive(Clone, Debug)]
pub struct ResolvedStack {
    /// The layers, bottom first.
    pub layers: Vec<(LayerDescriptor, Params)>,
    /// For each layer, where its name starts in the stack string (a
    /// confidential layer may have moved; see [`Registry::resolve`]).
    pub columns: Vec<usize>,
}

impl ResolvedStack {
    /// The stack string in canonical form: names, and the parameters whose
    /// values differ from their defaults, in declaration order.
    pub fn canonical(&self) -> String {
        self.render(|spec, v| {
            // An empty text default means "not set" (see `Params::defaults`).
            let default = match (spec.kind, spec.default) {
                (crate::layer::ParamKind::Str, "") => Some(ParamValue::Str(String::new())),
                (kind, text) => ParamValue::parse(kind, text).ok(),
            };
            default.as_ref() != Some(v)
        })
    }

    /// A hash of the layers and of every parameter that must agree between
    /// members. Frames carry it; a member running another stack drops them.
    pub fn fingerprint(&self) -> u32 {
        let wire = self.render(|spec, _| spec.wire);
        let h = fnv1a64(wire.as_bytes());
        (h ^ (h >> 32)) as u32
    }

    fn render(&self, include: impl Fn(&crate::layer::ParamSpec, &ParamValue) -> bool) -> String {
        let mut out = String::new();
        for (i, (desc, params)) in self.layers.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            out.push_str(desc.name);
            let shown: Vec<String> =
                desc.params.iter().filter_map(|spec| params.get(spec.name).filter(|v| include(spec, v)).map(|v| format!("{}={v}", spec.name))).collect();
            if !shown.is_empty() {
                out.push('(');
                out.push_str(&shown.join(","));
                out.push(')');
            }
        }
        out
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer. Names are unique; a second layer with a taken name is refused.
    pub fn register(&mut self, desc: LayerDescriptor) -> Result<(), RegistryError> {
        let ok = !desc.name.is_empty() && desc.name.len() <= 32 && desc.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(RegistryError::BadName(desc.name.to_string()));
        }
        if self.get(desc.name).is_some() {
            return Err(RegistryError::Duplicate(desc.name.to_string()));
        }
        Params::defaults(desc.params).map_err(|reason| RegistryError::BadDefault { layer: desc.name.to_string(), reason })?;
        self.layers.push(desc);
        Ok(())
    }

    /// The descriptor registered under `name`.
    pub fn get(&self, name: &str) -> Option<&LayerDescriptor> {
        self.layers.iter().find(|d| d.name == name)
    }

    /// Every registered descriptor, in registration order.
    pub fn descriptors(&self) -> &[LayerDescriptor] {
        &self.layers
    }

    fn hint(&self, name: &str) -> String {
        let close = self.layers.iter().map(|d| (edit_distance(&name.to_ascii_uppercase(), d.name), d.name)).filter(|(d, _)| *d <= 2).min();
        match close {
            Some((_, n)) => format!(" (did you mean {n}?)"),
            None => {
                let all: Vec<_> = self.layers.iter().map(|d| d.name).collect();
                format!(" (known layers: {})", all.join(", "))
            }
        }
    }

    /// Parses and checks a stack string: every layer known, every parameter
    /// declared and in range, and every layer's requirements provided by the
    /// layers below it.
    ///
    /// A layer that provides `confidential` (ENCRYPT) runs directly above the
    /// transport wherever the string names it, before the others in their
    /// written order: placed higher, the headers of the layers below it
    /// would travel in clear and could be forged (a NAK header that makes
    /// NAK drop a real message as a duplicate), and every packet that can
    /// influence the group must be authenticated. The canonical form shows
    /// the order that runs.
    pub fn resolve(&self, text: &str) -> Result<ResolvedStack, SpecError> {
        let mut specs = parse(text)?;
        let confidential = |s: &crate::spec::LayerSpec| self.get(&s.name).is_some_and(|d| d.provides.contains(Props::CONFIDENTIAL));
        specs.sort_by_key(|s| !confidential(s));
        let mut layers = Vec::with_capacity(specs.len());
        let mut provided = Props::NONE;
        for (i, spec) in specs.iter().enumerate() {
            let desc = *self
                .get(&spec.name)
                .ok_or_else(|| SpecError::new(SpecErrorKind::UnknownLayer { name: spec.name.clone(), hint: self.hint(&spec.name) }, text, spec.at))?;
            let mut params =
                Params::defaults(desc.params).map_err(|reason| SpecError::new(SpecErrorKind::Refused { layer: desc.name.into(), reason }, text, spec.at))?;
            for (j, (key, value, at)) in spec.params.iter().enumerate() {
                let pspec = desc.params.iter().find(|p| p.name == key).ok_or_else(|| {
                    let known: Vec<_> = desc.params.iter().map(|p| p.name).collect();
                    let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                    SpecError::new(SpecErrorKind::UnknownParam { layer: desc.name.into(), param: key.clone(), known }, text, *at)
                })?;
                if spec.params[..j].iter().any(|(k, _, _)| k == key) {
                    return Err(SpecError::new(SpecErrorKind::DuplicateParam { layer: desc.name.into(), param: key.clone() }, text, *at));
                }
                let v = ParamValue::parse(pspec.kind, value)
                    .map_err(|reason| SpecError::new(SpecErrorKind::BadValue { layer: desc.name.into(), param: key.clone(), reason }, text, *at))?;
                params.set(pspec.name, v);
            }
            let missing = desc.requires.minus(provided);
            if !missing.is_empty() {
                let below = if i == 0 { "the transport".to_string() } else { specs[..i].iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(":") };
                let kind = SpecErrorKind::Unmet { layer: desc.name.into(), missing: missing.to_string(), below, provided: provided.to_string() };
                return Err(SpecError::new(kind, text, spec.at));
            }
            provided = provided.union(desc.provides);
            layers.push((desc, params));
        }
        let columns = specs.iter().map(|s| s.at).collect();
        Ok(ResolvedStack { layers, columns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, ParamKind, ParamSpec};

    struct Nop;
    impl Layer for Nop {}

    const P: &[ParamSpec] = &[
        ParamSpec { name: "size", kind: ParamKind::U64 { min: 1, max: 100 }, default: "10", doc: "a size", wire: true },
        ParamSpec { name: "dir", kind: ParamKind::Str, default: "/tmp", doc: "a local path", wire: false },
    ];

    fn desc(name: &'static str, requires: Props, provides: Props) -> LayerDescriptor {
        LayerDescriptor { name, summary: "test", requires, provides, params: P, max_header_len: |_| 4, build: |_| Ok(Box::new(Nop)) }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(desc("LOW", Props::NONE, Props::RELIABLE)).unwrap();
        r.register(desc("HIGH", Props::RELIABLE.union(Props::FIFO), Props::TOTAL)).unwrap();
        r.register(desc("FIFO", Props::NONE, Props::FIFO)).unwrap();
        r
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let mut r = registry();
        assert_eq!(r.register(desc("LOW", Props::NONE, Props::NONE)), Err(RegistryError::Duplicate("LOW".into())));
        assert!(matches!(r.register(desc("A B", Props::NONE, Props::NONE)), Err(RegistryError::BadName(_))));
    }

    #[test]
    fn resolves_and_canonicalises() {
        let r = registry();
        let s = r.resolve("LOW(size=10,dir=/x):FIFO:HIGH(size=7)").unwrap();
        assert_eq!(s.canonical(), "LOW(dir=/x):FIFO:HIGH(size=7)");
        // Local parameters do not change the fingerprint; wire parameters do.
        assert_eq!(s.fingerprint(), r.resolve("LOW:FIFO:HIGH(size=7)").unwrap().fingerprint());
        assert_ne!(s.fingerprint(), r.resolve("LOW:FIFO:HIGH(size=8)").unwrap().fingerprint());
    }

    #[test]
    fn a_confidential_layer_runs_at_the_bottom() {
        let mut r = registry();
        r.register(desc("SEAL", Props::NONE, Props::CONFIDENTIAL)).unwrap();
        let s = r.resolve("LOW:FIFO:SEAL:HIGH(size=7)").unwrap();
        assert_eq!(s.canonical(), "SEAL:LOW:FIFO:HIGH(size=7)");
        assert_eq!(s.columns, vec![9, 0, 4, 14]);
        assert_eq!(s.fingerprint(), r.resolve("SEAL:LOW:FIFO:HIGH(size=7)").unwrap().fingerprint());
        let e = r.resolve("LOW:SEAL(size=0)").unwrap_err();
        assert_eq!(e.at, 9, "errors still point into the string as written");
    }

    #[test]
    fn errors_name_the_layer_and_column() {
        let r = registry();
        let e = r.resolve("LOW:LWO").unwrap_err();
        assert_eq!(e.at, 4);
        assert!(e.to_string().contains("did you mean LOW?"), "{e}");
        let e = r.resolve("LOW(sise=3)").unwrap_err();
        assert!(matches!(e.kind, SpecErrorKind::UnknownParam { .. }) && e.at == 4, "{e}");
        let e = r.resolve("LOW(size=0)").unwrap_err();
        assert!(e.to_string().contains("outside 1..=100"), "{e}");
        let e = r.resolve("LOW(size=1,size=2)").unwrap_err();
        assert!(matches!(e.kind, SpecErrorKind::DuplicateParam { .. }), "{e}");
        let e = r.resolve("LOW:HIGH").unwrap_err();
        assert_eq!(e.at, 4);
        assert_eq!(e.to_string(), "bad stack string at column 5: HIGH requires fifo from the layers below it, but LOW provides only reliable");
        let e = r.resolve("HIGH").unwrap_err();
        assert!(e.to_string().contains("the transport"), "{e}");
    }
}
