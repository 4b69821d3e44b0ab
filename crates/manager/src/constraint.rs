//! Placement constraints: `key==value` or `key!=value` over a node's
//! attributes. The control API parses them to refuse malformed ones before
//! anything is stored; the scheduler evaluates them.

use shoal_api::{Node, NodeRole};

/// How a constraint compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub operator: Operator,
    pub value: String,
}

/// The keys a constraint may test, besides `node.labels.<key>` and
/// `engine.labels.<key>`.
pub const CONSTRAINT_KEYS: &[&str] = &[
    "node.id",
    "node.hostname",
    "node.role",
    "node.platform.os",
    "node.platform.arch",
];

/// Why a constraint is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    NoOperator(String),
    #[error("constraint {constraint:?}: unknown key {key:?} (expected one of {}, node.labels.<key> or engine.labels.<key>)", CONSTRAINT_KEYS.join(", "))]
    UnknownKey { constraint: String, key: String },
    #[error("constraint {0:?}: the value is empty")]
    EmptyValue(String),
}

impl Constraint {
    /// Parses `node.labels.zone==a`. Whitespace around key and value is ignored.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let (key, operator, value) = if let Some((k, v)) = text.split_once("==") {
            (k, Operator::Equal, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, Operator::NotEqual, v)
        } else {
            return Err(ConstraintError::NoOperator(text.to_string()));
        };
        let key = key.trim();
        let value = value.trim();
        let known = CONSTRAINT_KEYS.contains(&key)
            || label_key(key).is_some_and(|(_, label)| !label.is_empty());
        if !known {
            return Err(ConstraintError::UnknownKey {
                constraint: text.to_string(),
                key: key.to_string(),
            });
        }
        if value.is_empty() || value.contains('=') {
            return Err(ConstraintError::EmptyValue(text.to_string()));
        }
        Ok(Constraint {
            key: key.to_string(),
            operator,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies the constraint. Values compare
    /// case-insensitively, except label values and ids.
    pub fn matches(&self, node: &Node) -> bool {
        // Borrowed, not copied: the scheduler asks this for every candidate
        // node of every task group.
        let description = node.description.as_ref();
        let role;
        let actual: Option<&str> = match self.key.as_str() {
            "node.id" => Some(node.id.as_str()),
            "node.hostname" => description.map(|d| d.hostname.as_str()),
            "node.role" => {
                role = NodeRole::try_from(node.role)
                    .unwrap_or(NodeRole::Worker)
                    .as_str_name();
                Some(role)
            }
            "node.platform.os" => description
                .and_then(|d| d.platform.as_ref())
                .map(|p| p.os.as_str()),
            "node.platform.arch" => description
                .and_then(|d| d.platform.as_ref())
                .map(|p| p.architecture.as_str()),
            key => match label_key(key) {
                Some((Labels::Node, label)) => node
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .and_then(|a| a.labels.get(label))
                    .map(String::as_str),
                Some((Labels::Engine, label)) => {
                    description.and_then(|d| d.engine_labels.get(label).map(String::as_str))
                }
                None => None,
            },
        };
        let equal = match actual {
            Some(v) if label_key(&self.key).is_some() || self.key == "node.id" => v == self.value,
            Some(v) => v.eq_ignore_ascii_case(&self.value),
            None => false,
        };
        match self.operator {
            Operator::Equal => equal,
            Operator::NotEqual => !equal,
        }
    }
}

/// Whose labels a label key tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Labels {
    /// The node's own (`node update --label-add`).
    Node,
    /// Its Docker Engine's (the engine's configuration).
    Engine,
}

/// `node.labels.zone` → (Node, "zone"); `engine.labels.disk` → (Engine, "disk").
fn label_key(key: &str) -> Option<(Labels, &str)> {
    if let Some(label) = key.strip_prefix("node.labels.") {
        return Some((Labels::Node, label));
    }
    key.strip_prefix("engine.labels.")
        .map(|label| (Labels::Engine, label))
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.operator {
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
        };
        write!(f, "{}{}{}", self.key, op, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{Annotations, NodeDescription, NodeSpec, Platform};

    fn node() -> Node {
        Node {
            id: "n1".into(),
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    name: String::new(),
                    labels: [("zone".to_string(), "a".to_string())].into(),
                }),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: "host1".into(),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                engine_version: "20.10.24".into(),
                engine_labels: [("disk".to_string(), "ssd".to_string())].into(),
                ..Default::default()
            }),
            role: NodeRole::Manager as i32,
            ..Default::default()
        }
    }

    #[test]
    fn single_equals_sign_is_refused_with_the_expected_form() {
        let err = Constraint::parse("node.labels.zone=a").unwrap_err();
        assert_eq!(
            err,
            ConstraintError::NoOperator("node.labels.zone=a".into())
        );
        assert!(err.to_string().contains("KEY==VALUE"));
    }

    #[test]
    fn unknown_key_is_refused_naming_the_known_ones() {
        let err = Constraint::parse("foo==bar").unwrap_err();
        assert!(matches!(err, ConstraintError::UnknownKey { ref key, .. } if key == "foo"));
        assert!(err.to_string().contains("node.hostname"));
        assert!(Constraint::parse("node.labels.==x").is_err());
        assert!(Constraint::parse("engine.labels.==x").is_err());
        assert!(err.to_string().contains("engine.labels.<key>"));
        assert!(Constraint::parse("node.role==").is_err());
    }

    #[test]
    fn constraints_match_labels_role_and_platform() {
        let n = node();
        for (text, expected) in [
            ("node.labels.zone==a", true),
            ("node.labels.zone!=a", false),
            ("node.labels.zone==b", false),
            ("node.labels.rack==1", false),
            ("node.labels.rack!=1", true),
            ("node.role==manager", true),
            ("node.role!=worker", true),
            ("node.hostname==HOST1", true),
            ("node.platform.os==linux", true),
            ("node.platform.arch==arm64", false),
            ("node.id==n1", true),
            ("engine.labels.disk==ssd", true),
            ("engine.labels.disk==SSD", false),
            ("engine.labels.zone==a", false),
            ("engine.labels.zone!=a", true),
        ] {
            let c = Constraint::parse(text).unwrap();
            assert_eq!(c.matches(&n), expected, "{text}");
            assert_eq!(c.to_string(), text);
        }
    }
}
