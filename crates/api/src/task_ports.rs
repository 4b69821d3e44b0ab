//! A task's named ports: which it asks for (`TaskSpec.ports`), which it was
//! given (`Endpoint.named_ports`, allocator-owned), and what the process is
//! told of them. Shared by the allocator (gives them), the dispatcher (sends
//! a task only once it has them all) and the agent (tells the process).

use crate::{port_config, PortConfig, PortRange, Task, TaskSpec};

/// The dynamic range when the cluster sets none.
pub const DEFAULT_DYNAMIC_PORTS: (u32, u32) = (20_000, 32_000);

impl PortRange {
    /// The range in force, `(first, last)` inclusive: the default when unset.
    pub fn or_default(range: Option<&PortRange>) -> (u32, u32) {
        match range {
            Some(r) if r.first != 0 || r.last != 0 => (r.first, r.last),
            _ => DEFAULT_DYNAMIC_PORTS,
        }
    }
}

impl PortConfig {
    /// A named port given to a task: host mode, bound where it is published.
    pub fn named(name: &str, port: u32, host_ip: &str) -> PortConfig {
        PortConfig {
            name: name.to_string(),
            protocol: port_config::Protocol::Tcp as i32,
            target_port: port,
            published_port: port,
            publish_mode: port_config::PublishMode::Host as i32,
            host_ip: host_ip.to_string(),
        }
    }
}

impl Task {
    /// The named ports this task was given.
    pub fn named_ports(&self) -> &[PortConfig] {
        self.endpoint
            .as_ref()
            .map_or(&[][..], |e| e.named_ports.as_slice())
    }

    /// Whether every named port `spec` asks for was given: a task is sent
    /// to its node only then.
    pub fn has_ports_of(&self, spec: &TaskSpec) -> bool {
        spec.ports
            .iter()
            .all(|p| self.named_ports().iter().any(|given| given.name == p.name))
    }
}

/// What a task's process is told of its named ports, as `NAME=value`
/// entries: where to bind (`SHOAL_PORT_<NAME>`), the port on the node
/// (`SHOAL_HOST_PORT_<NAME>`), the node's address (`SHOAL_IP_<NAME>`) and
/// both together (`SHOAL_ADDR_<NAME>`), as Nomad's `NOMAD_PORT_*` are.
pub fn port_env(task: &Task) -> Vec<String> {
    let mut env = Vec::new();
    for p in task.named_ports() {
        let name = p.name.to_ascii_uppercase();
        let ip = if p.host_ip.is_empty() {
            "127.0.0.1"
        } else {
            p.host_ip.as_str()
        };
        env.push(format!("SHOAL_PORT_{name}={}", p.target_port));
        env.push(format!("SHOAL_HOST_PORT_{name}={}", p.published_port));
        env.push(format!("SHOAL_IP_{name}={ip}"));
        let addr = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", p.published_port),
            _ => format!("{ip}:{}", p.published_port),
        };
        env.push(format!("SHOAL_ADDR_{name}={addr}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, NamedPort};

    #[test]
    fn a_task_is_told_each_named_port_four_ways() {
        let task = Task {
            endpoint: Some(Endpoint {
                named_ports: vec![
                    PortConfig::named("http", 20001, "10.0.0.2"),
                    PortConfig::named("admin_2", 9000, ""),
                    PortConfig::named("v6", 20002, "fd00::2"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            port_env(&task),
            [
                "SHOAL_PORT_HTTP=20001",
                "SHOAL_HOST_PORT_HTTP=20001",
                "SHOAL_IP_HTTP=10.0.0.2",
                "SHOAL_ADDR_HTTP=10.0.0.2:20001",
                "SHOAL_PORT_ADMIN_2=9000",
                "SHOAL_HOST_PORT_ADMIN_2=9000",
                "SHOAL_IP_ADMIN_2=127.0.0.1",
                "SHOAL_ADDR_ADMIN_2=127.0.0.1:9000",
                "SHOAL_PORT_V6=20002",
                "SHOAL_HOST_PORT_V6=20002",
                "SHOAL_IP_V6=fd00::2",
                "SHOAL_ADDR_V6=[fd00::2]:20002",
            ]
        );
    }

    #[test]
    fn a_task_has_its_ports_only_when_each_asked_for_was_given() {
        let spec = TaskSpec {
            ports: vec![
                NamedPort {
                    name: "http".into(),
                    static_port: 0,
                },
                NamedPort {
                    name: "admin".into(),
                    static_port: 9000,
                },
            ],
            ..Default::default()
        };
        let mut task = Task::default();
        assert!(!task.has_ports_of(&spec));
        task.endpoint = Some(Endpoint {
            named_ports: vec![PortConfig::named("admin", 9000, "")],
            ..Default::default()
        });
        assert!(!task.has_ports_of(&spec));
        task.endpoint
            .as_mut()
            .unwrap()
            .named_ports
            .push(PortConfig::named("http", 20000, ""));
        assert!(task.has_ports_of(&spec));
        assert!(Task::default().has_ports_of(&TaskSpec::default()));
    }
}
