//! Uniform access to the five object kinds, so the store, the watch stream and
//! the CLI can treat "an object" without matching on its kind everywhere.

use crate::{object, Cluster, Meta, Network, Node, Object, Service, Task};

/// The kinds of object the store holds, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
}

impl ObjectKind {
    /// Every kind, in the order snapshots and listings use.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::Cluster,
        ObjectKind::Node,
        ObjectKind::Network,
        ObjectKind::Service,
        ObjectKind::Task,
    ];

    /// The lower-case name users see (`service`, `node` …).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Network => "network",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Object {
    /// The kind, or `None` for an object with no kind set (malformed input).
    pub fn kind(&self) -> Option<ObjectKind> {
        Some(match self.kind.as_ref()? {
            object::Kind::Cluster(_) => ObjectKind::Cluster,
            object::Kind::Node(_) => ObjectKind::Node,
            object::Kind::Service(_) => ObjectKind::Service,
            object::Kind::Task(_) => ObjectKind::Task,
            object::Kind::Network(_) => ObjectKind::Network,
        })
    }

    /// The object's id ("" when no kind is set).
    pub fn id(&self) -> &str {
        match &self.kind {
            Some(object::Kind::Cluster(o)) => &o.id,
            Some(object::Kind::Node(o)) => &o.id,
            Some(object::Kind::Service(o)) => &o.id,
            Some(object::Kind::Task(o)) => &o.id,
            Some(object::Kind::Network(o)) => &o.id,
            None => "",
        }
    }

    /// The user-given name, for kinds whose names are unique.
    pub fn name(&self) -> Option<&str> {
        let annotations = match &self.kind {
            Some(object::Kind::Cluster(o)) => o.spec.as_ref()?.annotations.as_ref(),
            Some(object::Kind::Node(o)) => return o.name(),
            Some(object::Kind::Service(o)) => o.spec.as_ref()?.annotations.as_ref(),
            Some(object::Kind::Network(o)) => o.spec.as_ref()?.annotations.as_ref(),
            Some(object::Kind::Task(_)) | None => None,
        };
        annotations
            .map(|a| a.name.as_str())
            .filter(|n| !n.is_empty())
    }

    /// The object's meta, if set.
    pub fn meta(&self) -> Option<&Meta> {
        match &self.kind {
            Some(object::Kind::Cluster(o)) => o.meta.as_ref(),
            Some(object::Kind::Node(o)) => o.meta.as_ref(),
            Some(object::Kind::Service(o)) => o.meta.as_ref(),
            Some(object::Kind::Task(o)) => o.meta.as_ref(),
            Some(object::Kind::Network(o)) => o.meta.as_ref(),
            None => None,
        }
    }

    /// The object's meta, created empty if unset.
    pub fn meta_mut(&mut self) -> Option<&mut Meta> {
        let meta = match &mut self.kind {
            Some(object::Kind::Cluster(o)) => &mut o.meta,
            Some(object::Kind::Node(o)) => &mut o.meta,
            Some(object::Kind::Service(o)) => &mut o.meta,
            Some(object::Kind::Task(o)) => &mut o.meta,
            Some(object::Kind::Network(o)) => &mut o.meta,
            None => return None,
        };
        Some(meta.get_or_insert_with(Meta::default))
    }

    /// `meta.version`, 0 when unset.
    pub fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }
}

impl Node {
    /// A node is named by its spec's name, else by its hostname.
    pub fn name(&self) -> Option<&str> {
        let spec_name = self
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map(|a| a.name.as_str())
            .filter(|n| !n.is_empty());
        spec_name.or_else(|| {
            self.description
                .as_ref()
                .map(|d| d.hostname.as_str())
                .filter(|n| !n.is_empty())
        })
    }
}

macro_rules! into_object {
    ($($t:ident),*) => {
        $(impl From<$t> for Object {
            fn from(o: $t) -> Object { Object { kind: Some(object::Kind::$t(Box::new(o))) } }
        }
        impl From<Box<$t>> for Object {
            fn from(o: Box<$t>) -> Object { Object { kind: Some(object::Kind::$t(o)) } }
        })*
    };
}
into_object!(Cluster, Node, Service, Task, Network);
