//! Generates the protobuf types and gRPC stubs from `proto/shoal.proto`, with a
//! vendored `protoc` so a fresh machine needs nothing installed.

/// Enum fields are stored as `i32` by prost; inspect output should say
/// `"RUNNING"`, not `512`, so each one is serialized through its enum's name.
const ENUM_FIELDS: &[(&str, &str)] = &[
    (
        ".shoal.v1.RestartPolicy.condition",
        "restart_policy::Condition",
    ),
    (".shoal.v1.ServiceSpec.mode", "ServiceMode"),
    (
        ".shoal.v1.UpdateConfig.failure_action",
        "update_config::FailureAction",
    ),
    (".shoal.v1.UpdateConfig.order", "update_config::Order"),
    (".shoal.v1.PortConfig.protocol", "port_config::Protocol"),
    (
        ".shoal.v1.PortConfig.publish_mode",
        "port_config::PublishMode",
    ),
    (".shoal.v1.UpdateStatus.state", "update_status::State"),
    (".shoal.v1.TaskStatus.state", "TaskState"),
    (".shoal.v1.TaskStatus.health", "task_status::Health"),
    (".shoal.v1.Task.desired_state", "TaskState"),
    (".shoal.v1.NodeSpec.desired_role", "NodeRole"),
    (".shoal.v1.Node.role", "NodeRole"),
    (".shoal.v1.NodeSpec.availability", "node_spec::Availability"),
    (".shoal.v1.NodeStatus.state", "node_status::State"),
    (
        ".shoal.v1.ManagerStatus.reachability",
        "manager_status::Reachability",
    ),
    (".shoal.v1.StoreAction.kind", "store_action::Kind"),
    (".shoal.v1.WatchEvent.action", "watch_event::Action"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let mut builder = tonic_prost_build::configure()
        .btree_map(".")
        // A store action carries one object; inline, every action is as big
        // as the largest kind (a task, about 660 bytes), and a scheduler pass
        // over 100,000 tasks spent a third of its time faulting in pages.
        .boxed(".shoal.v1.Object.kind.task")
        .boxed(".shoal.v1.Object.kind.service")
        .boxed(".shoal.v1.Object.kind.node")
        .boxed(".shoal.v1.Object.kind.cluster")
        .boxed(".shoal.v1.Object.kind.network")
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // The CA's key is never printed, by Debug or as JSON (RootCa's
        // Debug is written by hand in lib.rs).
        .skip_debug([".shoal.v1.RootCa"])
        .field_attribute(".shoal.v1.RootCa.key_pem", "#[serde(skip)]")
        .field_attribute(".shoal.v1.JoinSecret.nonce", "#[serde(skip)]");
    for (field, enum_type) in ENUM_FIELDS {
        builder = builder.field_attribute(
            field,
            format!("#[serde(serialize_with = \"crate::enum_name::serialize::<{enum_type}, _>\")]"),
        );
    }
    builder.compile_protos(&["proto/shoal.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    Ok(())
}
