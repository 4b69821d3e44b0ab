//! Other hosts for network tests: network namespaces joined to this one by
//! veth pairs, so cutting a link is a real network fault (connections
//! hang, nothing is refused). Needs root and `ip netns`; says SKIPPED
//! plainly otherwise.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace joined to this one by a veth pair: `root_ip` here,
/// `host_ip` there. Deleted (with its link) when dropped.
pub struct Host {
    pub ns: String,
    pub link: String,
    pub root_ip: String,
    pub host_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Host {
    /// A new host, or `None` (with the reason printed) where namespaces
    /// cannot be made.
    pub fn new() -> Option<Host> {
        static HOSTS: AtomicUsize = AtomicUsize::new(0);
        let k = HOSTS.fetch_add(1, Ordering::Relaxed);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: network hosts need root (ip netns)");
            return None;
        }
        let pid = std::process::id();
        let ns = format!("shoal-{pid}-{k}");
        let link = format!("sh{pid}{k}");
        // One /30 per host: the second octet and the third from the pid,
        // the fourth from the host's number, so concurrent tests differ.
        let (a, b) = (64 + (pid / 256) % 128, pid % 256);
        let (root_ip, host_ip) = (
            format!("10.{a}.{b}.{}", k * 4 + 1),
            format!("10.{a}.{b}.{}", k * 4 + 2),
        );
        let peer = format!("{link}p");
        let made = ip(&["netns", "add", &ns])
            && ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])
            && ip(&["link", "set", &peer, "netns", &ns])
            && ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &link])
            && ip(&["link", "set", &link, "up"])
            && ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &peer,
            ])
            && ip(&["-n", &ns, "link", "set", &peer, "up"])
            && ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let host = Host {
            ns,
            link,
            root_ip,
            host_ip,
        };
        if !made {
            eprintln!("SKIPPED: `ip netns` could not make a host here");
            return None;
        }
        Some(host)
    }

    /// Cuts the link: packets are dropped both ways, connections hang.
    pub fn cut(&self) {
        assert!(ip(&["link", "set", &self.link, "down"]));
    }

    pub fn heal(&self) {
        assert!(ip(&["link", "set", &self.link, "up"]));
    }
}

impl Drop for Host {
    /// Deleting the namespace deletes its end of the pair, and so the pair.
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}
