//! Validation of what users declare. Pure functions: a spec in, the first
//! broken rule out, naming the field and the rule. The control API runs them
//! before proposing anything, so a bad spec is never half-written.

use std::collections::HashSet;

use shoal_api::{
    mount, node_spec, port_config, restart_policy, update_config, Annotations, ClusterSpec,
    HealthConfig, NetworkSpec, NodeSpec, ResourceRequirements, Runtime, ServiceMode, ServiceSpec,
    TaskSpec, UpdateConfig,
};

use crate::constraint::Constraint;

/// A spec that breaks a rule: which field, and which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidSpec {
    pub field: String,
    pub rule: String,
}

fn invalid(field: impl Into<String>, rule: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Longest name: one DNS label.
pub const MAX_NAME_LEN: usize = 63;
/// Network drivers this version knows.
pub const NETWORK_DRIVERS: &[&str] = &["overlay"];

/// Names are DNS labels: 1–63 letters, digits and hyphens, not starting or
/// ending with a hyphen, so a service name can be a DNS name later.
pub fn validate_name(field: &str, name: &str) -> Result<(), InvalidSpec> {
    if name.is_empty() {
        return Err(invalid(field, "a name is required"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!(
                "{name:?} is {} characters; at most {MAX_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            field,
            format!("{name:?} is not a valid name: use letters, digits and '-', not starting or ending with '-'"),
        ));
    }
    Ok(())
}

/// The labels of one object take at most this many bytes (keys and values):
/// objects are copied into every list and watch event, and one object must
/// stay far below the 16 MiB a message carries.
pub const MAX_LABEL_BYTES: usize = 256 << 10;
/// A service spec takes at most this many bytes encoded (its labels, env,
/// command …): every task carries a copy of its template.
pub const MAX_SERVICE_SPEC_BYTES: usize = 1 << 20;

fn validate_labels(field: &str, annotations: &Annotations) -> Result<(), InvalidSpec> {
    for key in annotations.labels.keys() {
        if key.trim().is_empty() {
            return Err(invalid(field, "a label key must not be empty"));
        }
    }
    let bytes: usize = annotations
        .labels
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if bytes > MAX_LABEL_BYTES {
        return Err(invalid(
            field,
            format!("the labels take {bytes} bytes; at most {MAX_LABEL_BYTES} are allowed"),
        ));
    }
    Ok(())
}

fn enum_value<E: TryFrom<i32>>(field: &str, value: i32, known: &str) -> Result<E, InvalidSpec> {
    E::try_from(value)
        .map_err(|_| invalid(field, format!("unknown value {value} (expected {known})")))
}

/// Checks a service spec as the control API receives it.
pub fn validate_service_spec(spec: &ServiceSpec) -> Result<(), InvalidSpec> {
    let annotations = spec.annotations.clone().unwrap_or_default();
    validate_name("name", &annotations.name)?;
    validate_labels("labels", &annotations)?;
    let bytes = prost::Message::encoded_len(spec);
    if bytes > MAX_SERVICE_SPEC_BYTES {
        return Err(invalid(
            "spec",
            format!("the service spec takes {bytes} bytes encoded; at most {MAX_SERVICE_SPEC_BYTES} are allowed"),
        ));
    }
    let mode: ServiceMode = enum_value(
        "mode",
        spec.mode,
        "replicated, global, replicated-job or global-job",
    )?;
    match (mode, spec.replicas) {
        (ServiceMode::Global | ServiceMode::GlobalJob, Some(_)) => {
            return Err(invalid(
                "replicas",
                "a global service runs one task per node and takes no replica count",
            ))
        }
        (_, Some(r)) if r < 0 => {
            return Err(invalid("replicas", format!("must be 0 or more, got {r}")))
        }
        _ => {}
    }
    if spec.max_concurrent > 0 && mode != ServiceMode::ReplicatedJob {
        return Err(invalid(
            "max_concurrent",
            "only a replicated job runs a number of tasks at once (--mode replicated-job)",
        ));
    }
    let task = spec
        .task
        .as_ref()
        .ok_or_else(|| invalid("task", "a service needs a task template"))?;
    validate_task_spec(task, mode)?;
    if let Some(update) = &spec.update {
        validate_update_config("update", update)?;
    }
    if let Some(rollback) = &spec.rollback {
        validate_update_config("rollback", rollback)?;
    }
    if let Some(endpoint) = &spec.endpoint {
        let mut published = HashSet::new();
        for (i, port) in endpoint.ports.iter().enumerate() {
            let field = format!("publish[{i}]");
            let protocol: port_config::Protocol = enum_value(&field, port.protocol, "tcp or udp")?;
            enum_value::<port_config::PublishMode>(&field, port.publish_mode, "ingress or host")?;
            if port.target_port == 0 || port.target_port > 65_535 {
                return Err(invalid(
                    field,
                    format!("target port {} is out of range 1-65535", port.target_port),
                ));
            }
            if port.published_port > 65_535 {
                return Err(invalid(
                    field,
                    format!(
                        "published port {} is out of range 1-65535",
                        port.published_port
                    ),
                ));
            }
            if port.published_port != 0 && !published.insert((port.published_port, protocol)) {
                return Err(invalid(
                    field,
                    format!(
                        "port {}/{} is published twice",
                        port.published_port,
                        protocol.as_str_name().to_ascii_lowercase()
                    ),
                ));
            }
            // A task would hold the same node port twice, and no node
            // could take it.
            let host = port.publish_mode == port_config::PublishMode::Host as i32;
            if let Some(named) = task.ports.iter().find(|n| {
                host && protocol == port_config::Protocol::Tcp
                    && n.static_port != 0
                    && n.static_port == port.published_port
            }) {
                return Err(invalid(
                    field,
                    format!(
                        "port {} is published in host mode and asked for by the named port {:?} too",
                        port.published_port, named.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Named ports a task asks for at most: each one is a port held on its
/// node, and four environment variables.
pub const MAX_NAMED_PORTS: usize = 64;

/// Names become environment variables (`SHOAL_PORT_<NAME>`): a letter, then
/// letters, digits and '_'; unique without regard to case; static ports
/// unique too.
fn validate_named_ports(ports: &[shoal_api::NamedPort]) -> Result<(), InvalidSpec> {
    if ports.len() > MAX_NAMED_PORTS {
        return Err(invalid(
            "port",
            format!(
                "{} named ports; at most {MAX_NAMED_PORTS} are allowed",
                ports.len()
            ),
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        let field = format!("port[{i}]");
        let good = p.name.len() <= 32
            && p.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good {
            return Err(invalid(
                field,
                format!(
                    "name {:?}: a letter, then letters, digits and '_', at most 32 characters \
                     (it becomes SHOAL_PORT_<NAME>)",
                    p.name
                ),
            ));
        }
        if p.static_port > 65_535 {
            return Err(invalid(
                field,
                format!("port {} of {:?} is not in 1-65535", p.static_port, p.name),
            ));
        }
        if let Some(other) = ports[..i]
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(&p.name))
        {
            return Err(invalid(
                field,
                format!(
                    "the name {:?} is given twice (as {:?} too)",
                    p.name, other.name
                ),
            ));
        }
        if p.static_port != 0 {
            if let Some(other) = ports[..i].iter().find(|o| o.static_port == p.static_port) {
                return Err(invalid(
                    field,
                    format!(
                        "port {} is asked for by both {:?} and {:?}",
                        p.static_port, other.name, p.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_task_spec(task: &TaskSpec, mode: ServiceMode) -> Result<(), InvalidSpec> {
    let runtime = task.runtime.clone().unwrap_or_default();
    if runtime.image.is_empty() && runtime.command.is_empty() {
        return Err(invalid(
            "command",
            "a service needs a command (after --) or an --image",
        ));
    }
    if runtime.command.first().is_some_and(|c| c.is_empty()) {
        return Err(invalid("command", "the program to run must not be empty"));
    }
    for (i, entry) in runtime.env.iter().enumerate() {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => {
                return Err(invalid(
                    format!("env[{i}]"),
                    format!("{entry:?} must be KEY=VALUE with a non-empty KEY"),
                ))
            }
        }
    }
    if let Some(resources) = &task.resources {
        validate_resources(resources)?;
    }
    validate_named_ports(&task.ports)?;
    validate_container(task, &runtime)?;
    if let Some(health) = &task.health {
        validate_health(health)?;
    }
    if let Some(restart) = &task.restart {
        enum_value::<restart_policy::Condition>(
            "restart_condition",
            restart.condition,
            "any, on-failure or none",
        )?;
    }
    if let Some(placement) = &task.placement {
        for c in &placement.constraints {
            Constraint::parse(c).map_err(|e| invalid("constraint", e.to_string()))?;
        }
        for p in &placement.preferences {
            let label = p.spread_descriptor.strip_prefix("node.labels.");
            if label.is_none_or(str::is_empty) {
                return Err(invalid(
                    "placement_pref",
                    format!(
                        "spread={:?}: spread over a node label, node.labels.<key>",
                        p.spread_descriptor
                    ),
                ));
            }
        }
        if placement.max_replicas_per_node > 0
            && matches!(mode, ServiceMode::Global | ServiceMode::GlobalJob)
        {
            return Err(invalid(
                "replicas_max_per_node",
                "only replicated services take a per-node maximum",
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, net) in task.networks.iter().enumerate() {
        if net.target.is_empty() {
            return Err(invalid(
                format!("network[{i}]"),
                "the network name is empty",
            ));
        }
        if !seen.insert(net.target.as_str()) {
            return Err(invalid(
                format!("network[{i}]"),
                format!("network {:?} is attached twice", net.target),
            ));
        }
    }
    Ok(())
}

/// Longest image reference the engine takes (a name, a tag and a digest).
pub const MAX_IMAGE_LEN: usize = 512;
/// Label keys Shoal sets on every container it makes.
pub const CONTAINER_LABEL_PREFIX: &str = "com.shoal.";

/// What only a container takes, refused for a process (naming the flag),
/// and each container field's own rules.
fn validate_container(task: &TaskSpec, runtime: &Runtime) -> Result<(), InvalidSpec> {
    if !runtime.stop_signal.is_empty() && shoal_api::signal::number(&runtime.stop_signal).is_none()
    {
        return Err(invalid(
            "stop_signal",
            format!(
                "{:?} is not a signal (a name such as SIGTERM or TERM, or a number from 1 to 64)",
                runtime.stop_signal
            ),
        ));
    }
    let pids = task
        .resources
        .as_ref()
        .and_then(|r| r.limits)
        .map_or(0, |l| l.pids);
    if pids < 0 {
        return Err(invalid(
            "limit_pids",
            format!("must not be negative, got {pids}"),
        ));
    }
    if task
        .resources
        .as_ref()
        .and_then(|r| r.reservations)
        .is_some_and(|r| r.pids != 0)
    {
        return Err(invalid(
            "reserve_pids",
            "processes are limited, not reserved",
        ));
    }
    if runtime.image.is_empty() {
        let container_only = [
            ("entrypoint", !runtime.entrypoint.is_empty()),
            ("hostname", !runtime.hostname.is_empty()),
            ("container_label", !runtime.labels.is_empty()),
            ("mount", !runtime.mounts.is_empty()),
            ("init", runtime.init),
            ("read_only", runtime.read_only),
            ("cap_add", !runtime.cap_add.is_empty()),
            ("cap_drop", !runtime.cap_drop.is_empty()),
            ("limit_pids", pids > 0),
        ];
        if let Some((field, _)) = container_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *field,
                format!(
                    "only a container takes --{}: give the service an --image",
                    field.replace('_', "-")
                ),
            ));
        }
        return Ok(());
    }
    let image = &runtime.image;
    if image.len() > MAX_IMAGE_LEN
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
        || image.starts_with(['-', ':', '@', '/'])
        || repository_path(image)
            .chars()
            .any(|c| c.is_ascii_uppercase())
    {
        return Err(invalid(
            "image",
            format!(
                "{:?} is not an image reference (NAME[:TAG][@DIGEST], lower case, at most {MAX_IMAGE_LEN} characters)",
                truncated(image)
            ),
        ));
    }
    if runtime.entrypoint.first().is_some_and(|e| e.is_empty()) {
        return Err(invalid(
            "entrypoint",
            "the program to run must not be empty",
        ));
    }
    let hostname = &runtime.hostname;
    if !hostname.is_empty()
        && (hostname.len() > MAX_NAME_LEN
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || hostname.starts_with(['-', '.']))
    {
        return Err(invalid(
            "hostname",
            format!(
                "{:?}: letters, digits, '-' and '.', at most {MAX_NAME_LEN} characters",
                truncated(hostname)
            ),
        ));
    }
    for key in runtime.labels.keys() {
        if key.is_empty() {
            return Err(invalid("container_label", "a label needs a key"));
        }
        if key.starts_with(CONTAINER_LABEL_PREFIX) {
            return Err(invalid(
                "container_label",
                format!("{key:?}: keys starting with {CONTAINER_LABEL_PREFIX} are Shoal's own"),
            ));
        }
    }
    let mut targets = HashSet::new();
    for (i, m) in runtime.mounts.iter().enumerate() {
        let field = format!("mount[{i}]");
        let kind: mount::Type = enum_value(&field, m.r#type, "bind, volume or tmpfs")?;
        if !m.target.starts_with('/') || m.target == "/" {
            return Err(invalid(
                field,
                format!(
                    "target {:?} must be an absolute path other than /",
                    truncated(&m.target)
                ),
            ));
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(invalid(
                field,
                format!("target {:?} is mounted twice", truncated(&m.target)),
            ));
        }
        match kind {
            mount::Type::Bind if !m.source.starts_with('/') => {
                return Err(invalid(
                    field,
                    format!(
                        "a bind mount's source {:?} must be an absolute path on the node",
                        truncated(&m.source)
                    ),
                ))
            }
            mount::Type::Volume
                if !m.source.is_empty()
                    && (!m.source.starts_with(|c: char| c.is_ascii_alphanumeric())
                        || !m
                            .source
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))) =>
            {
                return Err(invalid(
                    field,
                    format!(
                        "volume name {:?}: letters, digits, '_', '.' and '-', starting with a letter or digit",
                        truncated(&m.source)
                    ),
                ))
            }
            mount::Type::Tmpfs if !m.source.is_empty() => {
                return Err(invalid(field, "a tmpfs mount has no source"))
            }
            _ => {}
        }
        if m.tmpfs_size_bytes < 0 || (m.tmpfs_size_bytes > 0 && kind != mount::Type::Tmpfs) {
            return Err(invalid(
                field,
                "tmpfs-size is for tmpfs mounts only, and not negative",
            ));
        }
    }
    for (field, caps) in [
        ("cap_add", &runtime.cap_add),
        ("cap_drop", &runtime.cap_drop),
    ] {
        for cap in caps {
            let valid = !cap.is_empty()
                && cap.len() <= 64
                && cap.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
            if !valid {
                return Err(invalid(
                    field,
                    format!(
                        "{:?} is not a capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)",
                        truncated(cap)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The part of an image reference that must be lower case: without its
/// digest, its tag, and a registry host (a first part with a `.` or `:`, or
/// `localhost`), which docker lets be any case.
fn repository_path(image: &str) -> &str {
    let named = image.split('@').next().unwrap_or(image);
    let untagged = match named.rfind(':') {
        Some(colon) if !named[colon..].contains('/') => &named[..colon],
        _ => named,
    };
    match untagged.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => untagged,
    }
}

/// At most 64 characters of what a user gave, for an error message.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn validate_resources(resources: &ResourceRequirements) -> Result<(), InvalidSpec> {
    let limits = resources.limits.unwrap_or_default();
    let reservations = resources.reservations.unwrap_or_default();
    for (field, value) in [
        ("limit_cpu", limits.nano_cpus),
        ("reserve_cpu", reservations.nano_cpus),
        ("limit_memory", limits.memory_bytes),
        ("reserve_memory", reservations.memory_bytes),
    ] {
        if value < 0 {
            return Err(invalid(field, format!("must not be negative, got {value}")));
        }
    }
    if limits.memory_bytes > 0 && reservations.memory_bytes > limits.memory_bytes {
        return Err(invalid(
            "reserve_memory",
            format!(
                "the reservation ({}) is above the limit ({})",
                human_bytes(reservations.memory_bytes),
                human_bytes(limits.memory_bytes)
            ),
        ));
    }
    if limits.nano_cpus > 0 && reservations.nano_cpus > limits.nano_cpus {
        return Err(invalid(
            "reserve_cpu",
            format!(
                "the reservation ({} CPUs) is above the limit ({} CPUs)",
                reservations.nano_cpus as f64 / 1e9,
                limits.nano_cpus as f64 / 1e9
            ),
        ));
    }
    Ok(())
}

/// `64 MiB`, `1.5 GiB`, `512 B`.
fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn validate_update_config(prefix: &str, update: &UpdateConfig) -> Result<(), InvalidSpec> {
    enum_value::<update_config::FailureAction>(
        &format!("{prefix}_failure_action"),
        update.failure_action,
        "pause, continue or rollback",
    )?;
    enum_value::<update_config::Order>(
        &format!("{prefix}_order"),
        update.order,
        "stop-first or start-first",
    )?;
    if !(0.0..=1.0).contains(&update.max_failure_ratio) {
        return Err(invalid(
            format!("{prefix}_max_failure_ratio"),
            format!("must be between 0 and 1, got {}", update.max_failure_ratio),
        ));
    }
    for (field, ms) in [("delay", update.delay_ms), ("monitor", update.monitor_ms)] {
        if ms > MAX_UPDATE_WAIT_MS {
            return Err(invalid(
                format!("{prefix}_{field}"),
                format!(
                    "must be at most {} days, got {ms} ms",
                    MAX_UPDATE_WAIT_MS / 86_400_000
                ),
            ));
        }
    }
    Ok(())
}

/// A health check: a command, and times within bounds.
fn validate_health(health: &HealthConfig) -> Result<(), InvalidSpec> {
    if health.disabled {
        return Ok(());
    }
    if health.command.trim().is_empty() {
        return Err(invalid(
            "health_cmd",
            "a health check needs a command (--health-cmd)",
        ));
    }
    for (field, ms, least) in [
        (
            "health_interval",
            health.interval_ms,
            MIN_HEALTH_INTERVAL_MS,
        ),
        ("health_timeout", health.timeout_ms, 1),
        ("health_start_period", health.start_period_ms, 0),
    ] {
        if ms < least || ms > MAX_UPDATE_WAIT_MS {
            return Err(invalid(
                field,
                format!(
                    "must be from {least} ms to {} days, got {ms} ms",
                    MAX_UPDATE_WAIT_MS / 86_400_000
                ),
            ));
        }
    }
    if health.retries == 0 || health.retries > MAX_HEALTH_RETRIES {
        return Err(invalid(
            "health_retries",
            format!(
                "must be from 1 to {MAX_HEALTH_RETRIES}, got {}",
                health.retries
            ),
        ));
    }
    Ok(())
}

/// The shortest time between health checks: each is a process.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 100;

/// Failures in a row a health check may be allowed before the task is
/// unhealthy.
pub const MAX_HEALTH_RETRIES: u64 = 1_000;

/// The longest update delay or monitor window: a rollout that waits longer
/// than a month between tasks is a mistake, and times stay far from
/// overflowing when added to a clock.
pub const MAX_UPDATE_WAIT_MS: u64 = 30 * 86_400_000;

/// Checks a node spec.
pub fn validate_node_spec(spec: &NodeSpec) -> Result<(), InvalidSpec> {
    enum_value::<node_spec::Availability>(
        "availability",
        spec.availability,
        "active, pause or drain",
    )?;
    enum_value::<shoal_api::NodeRole>("role", spec.desired_role, "worker or manager")?;
    if let Some(a) = &spec.annotations {
        if !a.name.is_empty() {
            validate_name("name", &a.name)?;
        }
        validate_labels("label", a)?;
    }
    Ok(())
}

/// Checks a network spec.
pub fn validate_network_spec(spec: &NetworkSpec) -> Result<(), InvalidSpec> {
    let annotations = spec.annotations.clone().unwrap_or_default();
    validate_name("name", &annotations.name)?;
    validate_labels("label", &annotations)?;
    if !NETWORK_DRIVERS.contains(&spec.driver.as_str()) {
        return Err(invalid(
            "driver",
            format!(
                "unknown driver {:?} (known: {})",
                spec.driver,
                NETWORK_DRIVERS.join(", ")
            ),
        ));
    }
    if !spec.subnet.is_empty() {
        parse_subnet(&spec.subnet).map_err(|rule| invalid("subnet", rule))?;
    }
    if !spec.gateway.is_empty() {
        let gw: std::net::Ipv4Addr = spec.gateway.parse().map_err(|_| {
            invalid(
                "gateway",
                format!("{:?} is not an IPv4 address", spec.gateway),
            )
        })?;
        if spec.subnet.is_empty() {
            return Err(invalid("gateway", "a gateway needs a --subnet"));
        }
        let (net, bits) = parse_subnet(&spec.subnet).map_err(|rule| invalid("subnet", rule))?;
        if !in_subnet(gw, net, bits) {
            return Err(invalid(
                "gateway",
                format!("{gw} is outside the subnet {}", spec.subnet),
            ));
        }
    }
    Ok(())
}

/// Parses an IPv4 CIDR whose host bits are zero: `10.20.0.0/16`.
pub fn parse_subnet(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (addr, bits) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not in CIDR form, e.g. 10.20.0.0/16"))?;
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
    let bits: u8 = bits
        .parse()
        .ok()
        .filter(|b| *b <= 32)
        .ok_or_else(|| format!("{text:?}: prefix length must be 0-32"))?;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    if u32::from(addr) & !mask != 0 {
        let net = std::net::Ipv4Addr::from(u32::from(addr) & mask);
        return Err(format!(
            "{text:?} has host bits set; did you mean {net}/{bits}?"
        ));
    }
    Ok((addr, bits))
}

fn in_subnet(ip: std::net::Ipv4Addr, net: std::net::Ipv4Addr, bits: u8) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net)
}

/// Whether two subnets share any address.
pub fn subnets_overlap(a: (std::net::Ipv4Addr, u8), b: (std::net::Ipv4Addr, u8)) -> bool {
    let bits = a.1.min(b.1);
    in_subnet(a.0, b.0, bits) || in_subnet(b.0, a.0, bits)
}

/// The largest `max_new_tasks_per_pass` a cluster may set.
const MAX_NEW_TASKS_PER_PASS_CEILING: u64 = 1_000_000;
/// The largest replica limits a cluster may set: about what a manager of
/// 24 GiB holds in tasks with their history.
const MAX_REPLICAS_CEILING: u64 = 10_000_000;

/// Checks a cluster spec.
/// The longest node certificate lifetime a cluster may set: 10 years,
/// inside the root's 20.
const MAX_NODE_CERT_EXPIRY_SECS: u64 = 10 * 365 * 86_400;

pub fn validate_cluster_spec(spec: &ClusterSpec) -> Result<(), InvalidSpec> {
    if let Some(o) = &spec.orchestration {
        if o.task_history_retention_limit < 0 {
            return Err(invalid(
                "task_history_limit",
                format!("must be 0 or more, got {}", o.task_history_retention_limit),
            ));
        }
        // Past these a single pass, or a single service, is again the
        // unbounded work the limits exist to prevent.
        if o.max_new_tasks_per_pass > MAX_NEW_TASKS_PER_PASS_CEILING {
            return Err(invalid(
                "max_new_tasks_per_pass",
                format!(
                    "must be at most {MAX_NEW_TASKS_PER_PASS_CEILING}, got {}",
                    o.max_new_tasks_per_pass
                ),
            ));
        }
        if let Some(r) = o
            .dynamic_ports
            .as_ref()
            .filter(|r| r.first != 0 || r.last != 0)
        {
            if r.first == 0 || r.last > 65_535 || r.first > r.last {
                return Err(invalid(
                    "dynamic_ports",
                    format!(
                        "must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got {}-{}",
                        r.first, r.last
                    ),
                ));
            }
        }
        if o.max_replicas_per_service > MAX_REPLICAS_CEILING
            || o.max_replicas_total > MAX_REPLICAS_CEILING
        {
            return Err(invalid(
                if o.max_replicas_per_service > MAX_REPLICAS_CEILING {
                    "max_replicas_per_service"
                } else {
                    "max_replicas_total"
                },
                format!(
                    "must be at most {MAX_REPLICAS_CEILING}, got {}",
                    o.max_replicas_per_service.max(o.max_replicas_total)
                ),
            ));
        }
    }
    if let Some(d) = &spec.dispatcher {
        if d.heartbeat_period_ms == 0 {
            return Err(invalid("dispatcher_heartbeat", "must be more than 0"));
        }
    }
    if let Some(raft) = &spec.raft {
        use shoal_raft::{MAX_ELECTION_TIMEOUT_MS, MIN_ELECTION_TIMEOUT_MS};
        let ms = raft.election_timeout_ms;
        if ms != 0 && !(MIN_ELECTION_TIMEOUT_MS..=MAX_ELECTION_TIMEOUT_MS).contains(&ms) {
            return Err(invalid(
                "election_timeout",
                format!(
                    "must be between {MIN_ELECTION_TIMEOUT_MS} ms and {MAX_ELECTION_TIMEOUT_MS} ms, got {ms} ms"
                ),
            ));
        }
    }
    if let Some(ca) = &spec.ca {
        use crate::certificate_authority::MIN_NODE_CERT_EXPIRY;
        let secs = ca.node_cert_expiry_secs;
        // 0 is the default; a lifetime past the root's own (20 years) would
        // outlive what signs it.
        if secs != 0 && secs < MIN_NODE_CERT_EXPIRY.as_secs() {
            return Err(invalid(
                "cert_expiry",
                format!(
                    "must be at least {} s (a node renews at half of it at the earliest), got {secs} s",
                    MIN_NODE_CERT_EXPIRY.as_secs()
                ),
            ));
        }
        if secs > MAX_NODE_CERT_EXPIRY_SECS {
            return Err(invalid(
                "cert_expiry",
                format!("must be at most {MAX_NODE_CERT_EXPIRY_SECS} s (10 years), got {secs} s"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::{EndpointSpec, Placement, PortConfig, Resources, RestartPolicy, Runtime};

    fn spec() -> ServiceSpec {
        ServiceSpec {
            annotations: Some(Annotations {
                name: "web".into(),
                labels: Default::default(),
            }),
            task: Some(TaskSpec {
                runtime: Some(Runtime {
                    command: vec!["sleep".into(), "100".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            replicas: Some(3),
            ..Default::default()
        }
    }

    fn field_of(spec: &ServiceSpec) -> String {
        validate_service_spec(spec)
            .expect_err("must be refused")
            .field
    }

    #[test]
    fn a_plain_service_is_accepted() {
        assert_eq!(validate_service_spec(&spec()), Ok(()));
    }

    #[test]
    fn names_must_be_dns_labels_of_at_most_63_characters() {
        for bad in ["", "-web", "web-", "we b", "wéb", "web_1", &"a".repeat(64)] {
            let mut s = spec();
            s.annotations.as_mut().unwrap().name = bad.to_string();
            assert_eq!(field_of(&s), "name", "{bad:?}");
        }
        let mut s = spec();
        s.annotations.as_mut().unwrap().name = "a".repeat(63);
        assert_eq!(validate_service_spec(&s), Ok(()));
    }

    #[test]
    fn image_references_are_lower_case_but_their_tag_and_registry_host_need_not_be() {
        let with = |image: &str| {
            let mut s = spec();
            s.task.as_mut().unwrap().runtime.as_mut().unwrap().image = image.into();
            validate_service_spec(&s)
        };
        for good in [
            "busybox",
            "busybox:1",
            "app:v1-RC1",
            "Registry.Example.com:5000/team/app:Latest",
            "localhost/app@sha256:abc",
        ] {
            assert_eq!(with(good), Ok(()), "{good}");
        }
        for bad in ["Busybox", "team/App:1", "busy box", "-x", ":1"] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.field, "image", "{bad}");
        }
    }

    #[test]
    fn a_health_check_needs_a_command_and_bounded_times() {
        let good = HealthConfig {
            command: "true".into(),
            interval_ms: 1_000,
            timeout_ms: 1_000,
            retries: 3,
            start_period_ms: 0,
            disabled: false,
        };
        let with = |h: HealthConfig| {
            let mut s = spec();
            s.task.as_mut().unwrap().health = Some(h);
            s
        };
        assert!(validate_service_spec(&with(good.clone())).is_ok());
        for (bad, field) in [
            (
                HealthConfig {
                    command: " ".into(),
                    ..good.clone()
                },
                "health_cmd",
            ),
            (
                HealthConfig {
                    interval_ms: 0,
                    ..good.clone()
                },
                "health_interval",
            ),
            (
                HealthConfig {
                    timeout_ms: u64::MAX,
                    ..good.clone()
                },
                "health_timeout",
            ),
            (
                HealthConfig {
                    retries: 0,
                    ..good.clone()
                },
                "health_retries",
            ),
            (
                HealthConfig {
                    start_period_ms: MAX_UPDATE_WAIT_MS + 1,
                    ..good.clone()
                },
                "health_start_period",
            ),
        ] {
            assert_eq!(field_of(&with(bad)), field);
        }
    }

    #[test]
    fn update_delays_and_monitors_are_bounded() {
        let mut s = spec();
        s.update = Some(UpdateConfig {
            delay_ms: MAX_UPDATE_WAIT_MS + 1,
            ..Default::default()
        });
        assert_eq!(field_of(&s), "update_delay");
        s.update = None;
        s.rollback = Some(UpdateConfig {
            monitor_ms: u64::MAX,
            ..Default::default()
        });
        assert_eq!(field_of(&s), "rollback_monitor");
        s.rollback = Some(UpdateConfig {
            monitor_ms: MAX_UPDATE_WAIT_MS,
            ..Default::default()
        });
        assert!(validate_service_spec(&s).is_ok());
    }

    #[test]
    fn max_concurrent_is_for_replicated_jobs_only() {
        let mut s = spec();
        s.max_concurrent = 2;
        assert_eq!(field_of(&s), "max_concurrent");
        s.mode = ServiceMode::ReplicatedJob as i32;
        assert!(validate_service_spec(&s).is_ok());
    }

    #[test]
    fn negative_replicas_and_replicas_of_global_services_are_refused() {
        let mut s = spec();
        s.replicas = Some(-1);
        assert_eq!(field_of(&s), "replicas");
        let mut s = spec();
        s.mode = ServiceMode::Global as i32;
        assert_eq!(field_of(&s), "replicas");
        s.replicas = None;
        assert_eq!(validate_service_spec(&s), Ok(()));
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut s = spec();
        s.task.as_mut().unwrap().restart = Some(RestartPolicy {
            condition: 9,
            ..Default::default()
        });
        assert_eq!(field_of(&s), "restart_condition");
        let mut s = spec();
        s.update = Some(UpdateConfig {
            failure_action: 7,
            ..Default::default()
        });
        assert_eq!(field_of(&s), "update_failure_action");
        let mut s = spec();
        s.mode = 42;
        assert_eq!(field_of(&s), "mode");
    }

    #[test]
    fn malformed_constraints_are_refused() {
        for bad in ["node.labels.zone=a", "foo==bar"] {
            let mut s = spec();
            s.task.as_mut().unwrap().placement = Some(Placement {
                constraints: vec![bad.into()],
                ..Default::default()
            });
            assert_eq!(field_of(&s), "constraint", "{bad}");
        }
    }

    #[test]
    fn reservations_above_limits_are_refused() {
        let mut s = spec();
        s.task.as_mut().unwrap().resources = Some(ResourceRequirements {
            limits: Some(Resources {
                pids: 0,
                nano_cpus: 0,
                memory_bytes: 64 << 20,
            }),
            reservations: Some(Resources {
                pids: 0,
                nano_cpus: 0,
                memory_bytes: 128 << 20,
            }),
        });
        assert_eq!(field_of(&s), "reserve_memory");
    }

    #[test]
    fn ports_out_of_range_or_published_twice_are_refused() {
        let port = |published, target| PortConfig {
            published_port: published,
            target_port: target,
            ..Default::default()
        };
        for ports in [
            vec![port(80, 0)],
            vec![port(70_000, 80)],
            vec![port(80, 80), port(80, 81)],
        ] {
            let mut s = spec();
            s.endpoint = Some(EndpointSpec { ports });
            assert!(field_of(&s).starts_with("publish["));
        }
        let mut s = spec();
        let mut udp = port(80, 80);
        udp.protocol = port_config::Protocol::Udp as i32;
        s.endpoint = Some(EndpointSpec {
            ports: vec![port(80, 80), udp],
        });
        assert_eq!(validate_service_spec(&s), Ok(()));
    }

    #[test]
    fn env_entries_need_a_key() {
        let mut s = spec();
        s.task.as_mut().unwrap().runtime.as_mut().unwrap().env = vec!["=1".into()];
        assert_eq!(field_of(&s), "env[0]");
    }

    #[test]
    fn a_service_needs_something_to_run() {
        let mut s = spec();
        s.task.as_mut().unwrap().runtime = None;
        assert_eq!(field_of(&s), "command");
    }

    #[test]
    fn subnets_must_be_cidr_network_addresses() {
        assert!(parse_subnet("10.20.0.0/16").is_ok());
        assert!(parse_subnet("10.20.0.1/16")
            .unwrap_err()
            .contains("10.20.0.0/16"));
        assert!(parse_subnet("10.20.0.0").is_err());
        assert!(parse_subnet("10.20.0.0/33").is_err());
        assert!(parse_subnet("300.0.0.0/8").is_err());
        let a = parse_subnet("10.20.0.0/16").unwrap();
        let b = parse_subnet("10.20.5.0/24").unwrap();
        let c = parse_subnet("10.21.0.0/16").unwrap();
        assert!(subnets_overlap(a, b));
        assert!(!subnets_overlap(a, c));
    }

    #[test]
    fn cluster_limits_beyond_their_ceiling_are_refused_naming_the_field() {
        let with = |o: shoal_api::OrchestrationConfig| ClusterSpec {
            orchestration: Some(o),
            ..Default::default()
        };
        let e = validate_cluster_spec(&with(shoal_api::OrchestrationConfig {
            max_replicas_total: MAX_REPLICAS_CEILING + 1,
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "max_replicas_total");
        assert!(
            e.rule.contains("must be at most 10000000, got 10000001"),
            "{}",
            e.rule
        );
        let e = validate_cluster_spec(&with(shoal_api::OrchestrationConfig {
            max_new_tasks_per_pass: MAX_NEW_TASKS_PER_PASS_CEILING + 1,
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "max_new_tasks_per_pass");
    }

    #[test]
    fn a_service_spec_over_its_size_limit_is_refused() {
        let mut s = spec();
        s.task
            .as_mut()
            .unwrap()
            .runtime
            .as_mut()
            .unwrap()
            .env
            .push(format!("BIG={}", "x".repeat(MAX_SERVICE_SPEC_BYTES)));
        let e = validate_service_spec(&s).unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.rule.contains("at most 1048576 are allowed"), "{}", e.rule);
    }

    #[test]
    fn cluster_history_limit_must_not_be_negative() {
        let spec = ClusterSpec {
            orchestration: Some(shoal_api::OrchestrationConfig {
                task_history_retention_limit: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            validate_cluster_spec(&spec).unwrap_err().field,
            "task_history_limit"
        );
    }
}
