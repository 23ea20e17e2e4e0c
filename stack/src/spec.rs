//! Stack strings: `NAME[(key=value,...)]` separated by `:`, bottom layer first,
//! as in `"FRAG(frag_size=1200):NAK(retransmit_ms=20)"`.
//!
//! Parsing is in two steps: [`parse`] checks the syntax and keeps the position
//! of every part; [`Registry::resolve`](crate::Registry::resolve) checks names,
//! parameters and requirements against the registered descriptors. Every
//! error carries the column of the offending part so it can be pointed at.

use std::fmt;

/// One layer as written in a stack string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// The layer's name as written.
    pub name: String,
    /// Byte offset of the name in the stack string.
    pub at: usize,
    /// `(key, value, offset of key)` as written.
    pub params: Vec<(String, String, usize)>,
}

/// What went wrong with a stack string, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecErrorKind {
    /// The string names no layer at all.
    #[error("the stack string is empty; name at least one layer, e.g. \"FRAG:NAK\"")]
    Empty,
    /// The text does not follow `NAME(key=value,...):NAME...`.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// No layer of that name is registered.
    #[error("unknown layer `{name}`{hint}")]
    UnknownLayer {
        /// The name as written.
        name: String,
        /// A suggestion, or the list of known layers.
        hint: String,
    },
    /// The layer has no parameter of that name.
    #[error("layer {layer} has no parameter `{param}` (it has: {known})")]
    UnknownParam {
        /// The layer.
        layer: String,
        /// The parameter as written.
        param: String,
        /// Its parameters.
        known: String,
    },
    /// The same parameter is set twice.
    #[error("parameter `{param}` of {layer} is set twice")]
    DuplicateParam {
        /// The layer.
        layer: String,
        /// The parameter.
        param: String,
    },
    /// The value does not fit the parameter's type or range.
    #[error("bad value for {layer}({param}=...): {reason}")]
    BadValue {
        /// The layer.
        layer: String,
        /// The parameter.
        param: String,
        /// Why.
        reason: String,
    },
    /// The layer's constructor refused the combination of values.
    #[error("layer {layer} refused its parameters: {reason}")]
    Refused {
        /// The layer.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A layer is placed over layers that lack a property it requires.
    #[error("{layer} requires {missing} from the layers below it, but {below} provide{s} only {provided}", s = if below.contains(':') { "" } else { "s" })]
    Unmet {
        /// The layer.
        layer: String,
        /// What is missing.
        missing: String,
        /// The layers below, as a stack string (or "the transport").
        below: String,
        /// What they provide.
        provided: String,
    },
    /// The headers of all layers cannot fit a datagram.
    #[error("the layers' headers take up to {total} bytes, more than the {limit} bytes a datagram can carry")]
    HeadersTooLarge {
        /// The sum of the layers' maximum header sizes.
        total: usize,
        /// What the transport allows.
        limit: usize,
    },
}

/// A stack-string error: the kind, and the text with the column it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// What went wrong.
    pub kind: SpecErrorKind,
    /// The stack string.
    pub text: String,
    /// Byte offset of the offending part.
    pub at: usize,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad stack string at column {}: {}", self.at + 1, self.kind)
    }
}

impl std::error::Error for SpecError {}

impl SpecError {
    /// The error, the stack string, and a caret under the offending part, on
    /// three lines (for terminals).
    pub fn pretty(&self) -> String {
        let col = self.text[..self.at.min(self.text.len())].chars().count();
        format!("{self}\n  {}\n  {}^", self.text, " ".repeat(col))
    }

    pub(crate) fn new(kind: SpecErrorKind, text: &str, at: usize) -> Self {
        SpecError { kind, text: text.to_string(), at }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks the syntax of a stack string and splits it into layers.
pub fn parse(text: &str) -> Result<Vec<LayerSpec>, SpecError> {
    let err = |msg: String, at: usize| SpecError::new(SpecErrorKind::Syntax(msg), text, at);
    if text.trim().is_empty() {
        return Err(SpecError::new(SpecErrorKind::Empty, text, 0));
    }
    let b: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let end = text.len();
    let pos = |i: usize| b.get(i).map_or(end, |(p, _)| *p);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].1.is_whitespace() {
            *i += 1;
        }
    };
    let mut layers = Vec::new();
    loop {
        skip_ws(&mut i);
        let start = i;
        while i < b.len() && is_name_char(b[i].1) {
            i += 1;
        }
        if i == start {
            let what = b.get(i).map_or("the end".to_string(), |(_, c)| format!("`{c}`"));
            return Err(err(format!("expected a layer name, found {what}"), pos(i)));
        }
        let name: String = b[start..i].iter().map(|(_, c)| c).collect();
        let mut spec = LayerSpec { name, at: pos(start), params: Vec::new() };
        skip_ws(&mut i);
        if i < b.len() && b[i].1 == '(' {
            let open = i;
            i += 1;
            loop {
                skip_ws(&mut i);
                if i < b.len() && b[i].1 == ')' && spec.params.is_empty() {
                    i += 1;
                    break;
                }
                let kstart = i;
                while i < b.len() && is_name_char(b[i].1) {
                    i += 1;
                }
                if i == kstart {
                    return Err(err("expected a parameter name".into(), pos(i)));
                }
                let key: String = b[kstart..i].iter().map(|(_, c)| c).collect();
                skip_ws(&mut i);
                if i >= b.len() || b[i].1 != '=' {
                    return Err(err(format!("expected `=` after parameter `{key}`"), pos(i)));
                }
                i += 1;
                let vstart = i;
                while i < b.len() && b[i].1 != ',' && b[i].1 != ')' {
                    i += 1;
                }
                if i >= b.len() {
                    return Err(err("unclosed `(`".into(), pos(open)));
                }
                let value: String = b[vstart..i].iter().map(|(_, c)| c).collect::<String>().trim().to_string();
                spec.params.push((key, value, pos(kstart)));
                let sep = b[i].1;
                i += 1;
                if sep == ')' {
                    break;
                }
            }
            skip_ws(&mut i);
        }
        layers.push(spec);
        if i >= b.len() {
            break;
        }
        if b[i].1 != ':' {
            return Err(err(format!("expected `:` or the end, found `{}`", b[i].1), pos(i)));
        }
        i += 1;
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layers_and_parameters_with_positions() {
        let l = parse("FRAG(frag_size=1200):NAK( retransmit_ms = 20 ):SAFE(log_dir=/var/lib/a:b)").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name, "FRAG");
        assert_eq!(l[0].params, vec![("frag_size".into(), "1200".into(), 5)]);
        assert_eq!(l[1].at, 21);
        assert_eq!(l[1].params[0].0, "retransmit_ms");
        assert_eq!(l[1].params[0].1, "20");
        assert_eq!(l[2].params[0].1, "/var/lib/a:b");
        assert_eq!(parse(" FRAG : NAK() ").unwrap().len(), 2);
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        for (text, at) in [("", 0), ("FRAG:", 5), ("FRAG::NAK", 5), ("FRAG(frag_size)", 14), ("FRAG(x=1", 4), ("FRAG NAK", 5), ("FR$G", 2), ("FRAG(=1)", 5)] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.pretty().contains('^'));
        }
    }
}
