//! Serializes prost's `i32` enum fields by name, so inspect output reads
//! `"RUNNING"` rather than `512`. A value this build does not know is shown as
//! its number, never dropped.

/// Implemented for every generated enum through prost's `as_str_name`.
pub trait EnumName: TryFrom<i32> {
    /// The protobuf name of the value.
    fn name(&self) -> &'static str;
}

/// serde `serialize_with` for an `i32` field holding enum `E`.
pub fn serialize<E: EnumName, S: serde::Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    match E::try_from(*value) {
        Ok(e) => s.serialize_str(e.name()),
        Err(_) => s.serialize_i32(*value),
    }
}

macro_rules! enum_names {
    ($($t:ty),* $(,)?) => {
        $(impl EnumName for $t {
            fn name(&self) -> &'static str { self.as_str_name() }
        })*
    };
}

use crate::*;
enum_names!(
    restart_policy::Condition,
    ServiceMode,
    update_config::FailureAction,
    update_config::Order,
    port_config::Protocol,
    port_config::PublishMode,
    update_status::State,
    task_status::Health,
    TaskState,
    NodeRole,
    node_spec::Availability,
    node_status::State,
    manager_status::Reachability,
    store_action::Kind,
    watch_event::Action,
);
