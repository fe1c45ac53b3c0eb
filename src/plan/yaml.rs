//! A YAML document as a tree of nodes that each know where they stand in the source.
//!
//! The plan is parsed with serde-saphyr. It was chosen deliberately: serde_yaml is archived and
//! gives no positions for values, serde_yml carries RustSec advisories (RUSTSEC-2025-0067/0068),
//! and serde_yaml_ng / serde_norway only locate parse errors. serde-saphyr is pure Rust and its
//! `Spanned<T>` gives line, column, byte offset and length for every value, which is what
//! `plan validate` needs to underline a wrong value in a plan that is valid YAML.
//!
//! The tree is decoded by hand (see `decode/`) rather than straight into serde structs, so that
//! one pass reports every problem in the file instead of stopping at the first.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A byte range in the plan source, with the 1-based line and column of its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
    pub line: usize,
    pub column: usize,
}

impl Span {
    fn from_location(loc: serde_saphyr::Location) -> Span {
        let s = loc.span();
        Span {
            offset: s.byte_offset().unwrap_or(0) as usize,
            len: s.byte_len().unwrap_or(0) as usize,
            line: loc.line() as usize,
            column: loc.column() as usize,
        }
    }
}

/// One YAML value with its position.
#[derive(Clone, Debug)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

/// The shapes a YAML value can take.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A key of a mapping with its value.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

impl Value {
    /// How the value is called in messages ("a string", "a list", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            span: Span::from_location(spanned.referenced),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("number too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Node>()?;
            entries.push(Entry {
                key: key.value.0,
                key_span: Span::from_location(key.referenced),
                value,
            });
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key, whatever scalar it was written as (`1:` and `true:` become text).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let text = match value {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_owned(),
            Value::Seq(_) | Value::Map(_) => {
                return Err(de::Error::custom("a mapping key must be a plain word"));
            }
        };
        Ok(KeyText(text))
    }
}

/// Parses a whole document. An empty document is a `Null` node.
pub fn parse(source: &str) -> Result<Node, serde_saphyr::Error> {
    let mut node = serde_saphyr::from_str::<Node>(source)?;
    keys_as_written(&mut node, source);
    Ok(node)
}

/// A key read as a boolean or null (`on:`, `yes:`, `off:`, `~:`) is the word as written: a
/// plan's keys are names (`notify[].on`), never values.
fn keys_as_written(node: &mut Node, source: &str) {
    match &mut node.value {
        Value::Map(entries) => {
            for e in entries {
                if matches!(e.key.as_str(), "true" | "false" | "null") {
                    let end = e.key_span.offset.saturating_add(e.key_span.len);
                    if let Some(text) = source.get(e.key_span.offset..end)
                        && !text.is_empty()
                        && text.bytes().all(|b| b.is_ascii_alphabetic() || b == b'~')
                    {
                        e.key = text.to_owned();
                    }
                }
                keys_as_written(&mut e.value, source);
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| keys_as_written(n, source)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_words_as_written() {
        let node = super::parse("a: {on: [x], off: 1, true: 2}\nyes: 3\n").unwrap();
        let super::Value::Map(top) = &node.value else {
            panic!("a map")
        };
        let keys: Vec<&str> = top.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "yes"]);
        let super::Value::Map(inner) = &top[0].value.value else {
            panic!("a map")
        };
        let keys: Vec<&str> = inner.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["on", "off", "true"]);
    }
}
