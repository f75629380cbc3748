//! Parses YAML into JSON values while remembering where every node was written.
//!
//! The definition format is checked in two passes: the JSON Schema in `schemas/` (structure,
//! all problems at once) and the semantic checks (graph, catalogs, expressions). Both report
//! problems by JSON pointer; [`Locator`] turns a pointer back into the YAML line and column.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Budget, Options, Spanned};

/// A line and column in a source file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// Maps JSON pointers (`/steps/3/next`) to the position of the YAML node they name.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    positions: HashMap<String, Position>,
    /// Positions of mapping keys, so a problem about a key can point at the key itself.
    key_positions: HashMap<String, Position>,
}

impl Locator {
    /// The position of the node at `pointer`, or of its nearest ancestor that has one.
    pub fn position(&self, pointer: &str) -> Position {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// The position of the key that introduces the node at `pointer`, falling back to the node.
    pub fn key_position(&self, pointer: &str) -> Position {
        match self.key_positions.get(pointer) {
            Some(pos) => *pos,
            None => self.position(pointer),
        }
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn escape_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A YAML parse failure, with the position the parser reported when it had one.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

/// Limits on what a definition file may ask of the parser. A hostile file (alias bomb,
/// deeply nested flow collections, a huge scalar) is rejected before it costs memory.
pub fn budget() -> Budget {
    let mut b = Budget::default();
    b.max_depth = 24;
    b.max_nodes = 100_000;
    b.max_events = 250_000;
    b.max_aliases = 200;
    b.max_anchors = 200;
    b.max_total_scalar_bytes = 1 << 20;
    b.max_documents = 1;
    b
}

/// Parses `text` into a JSON value and a locator for its nodes.
pub fn parse(text: &str) -> Result<(Value, Locator), YamlError> {
    let mut options = Options::default();
    options.budget = Some(budget());
    // Only `true` and `false` are booleans: a step called `y` or `on` stays a string.
    options.strict_booleans = true;
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let position = e
            .location()
            .map(|l| Position {
                line: l.line(),
                column: l.column(),
            })
            .unwrap_or(Position { line: 1, column: 1 });
        YamlError {
            position,
            message: describe(&e),
        }
    })?;
    let mut locator = Locator::default();
    let mut problems = Vec::new();
    let value = root.value.into_json(
        String::new(),
        pos(&root.referenced),
        &mut locator,
        &mut problems,
    );
    if let Some(first) = problems.into_iter().next() {
        return Err(first);
    }
    Ok((value, locator))
}

/// The parser's message without its rendered source snippet and location suffix.
fn describe(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    // The position is printed by the caller in `file:line:column` form.
    let message = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // The parser's advice on its own Rust options means nothing to an administrator.
    if let Some(detail) = message.strip_prefix("budget breached: ") {
        return format!(
            "the document is too large or too deeply nested once aliases are expanded ({detail})"
        );
    }
    match message.strip_prefix("duplicate mapping key: ") {
        Some(rest) => {
            let key = rest.split(',').next().unwrap_or(rest).trim();
            format!("duplicate key `{key}`")
        }
        None => message.to_owned(),
    }
}

fn pos(l: &serde_saphyr::Location) -> Position {
    Position {
        line: l.line().max(1),
        column: l.column().max(1),
    }
}

/// A YAML node with the locations of its children.
enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<KeyNode>, Spanned<Node>)>),
}

/// A mapping key: definitions only use string keys, but YAML allows others, which are
/// turned into their string form here so the schema reports them as unknown fields.
struct KeyNode(String);

impl Node {
    fn into_json(
        self,
        pointer: String,
        at: Position,
        locator: &mut Locator,
        problems: &mut Vec<YamlError>,
    ) -> Value {
        locator.positions.insert(pointer.clone(), at);
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Number(n) => Value::Number(n),
            Node::String(s) => Value::String(s),
            Node::Seq(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let at = pos(&item.referenced);
                        item.value
                            .into_json(format!("{pointer}/{i}"), at, locator, problems)
                    })
                    .collect(),
            ),
            Node::Map(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    let key_at = pos(&key.referenced);
                    let name = key.value.0;
                    let child = format!("{pointer}/{}", escape_segment(&name));
                    if map.contains_key(&name) {
                        problems.push(YamlError {
                            position: key_at,
                            message: format!("duplicate key `{name}`"),
                        });
                        continue;
                    }
                    locator.key_positions.insert(child.clone(), key_at);
                    let at = pos(&value.referenced);
                    let v = value.value.into_json(child, at, locator, problems);
                    map.insert(name, v);
                }
                Value::Object(map)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyNode>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for KeyNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyNode, E> {
                Ok(KeyNode(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyNode, E> {
                Ok(KeyNode(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyNode, E> {
                Ok(KeyNode(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyNode, E> {
                Ok(KeyNode(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyNode, E> {
                Ok(KeyNode(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyNode, E> {
                Ok(KeyNode(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyNode, E> {
                Ok(KeyNode("null".to_owned()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_pointers() {
        let (value, loc) = parse("a: 1\nsteps:\n  - id: x\n    next: y\n").unwrap();
        assert_eq!(value["steps"][0]["next"], "y");
        assert_eq!(
            loc.position("/steps/0/next"),
            Position {
                line: 4,
                column: 11
            }
        );
        assert_eq!(
            loc.key_position("/steps/0/next"),
            Position { line: 4, column: 5 }
        );
        assert_eq!(
            loc.position("/steps/0/missing"),
            Position { line: 3, column: 5 }
        );
    }
}
