//! Manifests as a small tree that keeps comments (the evidence for each
//! rule), written as YAML or JSON. Strings are always double-quoted, so no
//! value can turn into a YAML 1.1 boolean or number.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Item>),
    Str(String),
    Int(i64),
}

/// A sequence item and the comment written above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub comment: Option<String>,
    pub node: Node,
}

impl Node {
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn seq(items: impl IntoIterator<Item = Node>) -> Node {
        Node::Seq(items.into_iter().map(|node| Item { comment: None, node }).collect())
    }

    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    pub fn to_json(&self) -> Value {
        match self {
            Node::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Node::Seq(s) => Value::Array(s.iter().map(|i| i.node.to_json()).collect()),
            Node::Str(s) => Value::String(s.clone()),
            Node::Int(n) => Value::from(*n),
        }
    }
}

/// A document: comment lines, then the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub comments: Vec<String>,
    pub node: Node,
}

fn scalar(n: &Node) -> Option<String> {
    match n {
        Node::Str(s) => Some(Value::String(s.clone()).to_string()),
        Node::Int(i) => Some(i.to_string()),
        Node::Map(m) if m.is_empty() => Some("{}".into()),
        Node::Seq(s) if s.is_empty() => Some("[]".into()),
        _ => None,
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"./_-".contains(&b));
    if plain { k.to_string() } else { Value::String(k.to_string()).to_string() }
}

fn write_map(m: &[(String, Node)], indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        match (scalar(v), v) {
            (Some(s), _) => {
                out.push(' ');
                out.push_str(&s);
                out.push('\n');
            }
            (None, Node::Map(inner)) => {
                out.push('\n');
                write_map(inner, indent + 2, out);
            }
            (None, Node::Seq(items)) => {
                out.push('\n');
                write_seq(items, indent, out);
            }
            (None, _) => unreachable!("scalars are handled above"),
        }
    }
}

fn write_seq(items: &[Item], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        for line in item.comment.iter().flat_map(|c| c.lines()) {
            out.push_str(&format!("{pad}# {line}\n"));
        }
        match (scalar(&item.node), &item.node) {
            (Some(s), _) => out.push_str(&format!("{pad}- {s}\n")),
            (None, Node::Map(m)) => {
                let mut inner = String::new();
                write_map(m, indent + 2, &mut inner);
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&inner[indent + 2..]);
            }
            (None, Node::Seq(s)) => {
                out.push_str(&format!("{pad}-\n"));
                write_seq(s, indent + 2, out);
            }
            (None, _) => unreachable!("scalars are handled above"),
        }
    }
}

/// Documents as multi-document YAML, comments included.
pub fn yaml(header: &[String], docs: &[Doc]) -> String {
    let mut out = String::new();
    for line in header {
        out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
    }
    for d in docs {
        out.push_str("---\n");
        for line in &d.comments {
            out.push_str(&format!("# {line}\n"));
        }
        if let Node::Map(m) = &d.node {
            write_map(m, 0, &mut out);
        }
    }
    out
}

/// Documents as a `kind: List`.
pub fn json(docs: &[Doc]) -> Value {
    let items: Vec<Value> = docs.iter().map(|d| d.node.to_json()).collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_back_as_the_json_it_stands_for() {
        let rule = Item {
            comment: Some("3 flows".into()),
            node: Node::map([
                (
                    "from",
                    Node::seq([Node::map([(
                        "podSelector",
                        Node::map([("matchLabels", Node::map([("app", Node::str("true"))]))]),
                    )])]),
                ),
                ("ports", Node::seq([Node::map([("protocol", Node::str("TCP")), ("port", Node::Int(80))])])),
            ]),
        };
        let spec = Node::map([
            ("podSelector", Node::map::<String>([])),
            ("policyTypes", Node::seq([Node::str("Ingress")])),
            ("ingress", Node::Seq(vec![rule])),
            ("egress", Node::Seq(vec![])),
        ]);
        let doc = Doc {
            comments: vec!["why".into()],
            node: Node::map([("kind", Node::str("NetworkPolicy")), ("spec", spec)]),
        };
        let text = yaml(&["header".into()], std::slice::from_ref(&doc));
        assert!(text.contains("  # 3 flows\n  - from:\n    - podSelector:\n"), "{text}");
        let back: Vec<Value> =
            serde_saphyr::from_multiple_with_options(&text, serde_saphyr::Options::default()).unwrap();
        assert_eq!(back, vec![doc.node.to_json()]);
        assert_eq!(back[0]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"], "true");
    }
}
