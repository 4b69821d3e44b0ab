//! Parsers for flag values: durations (`1m30s`), memory (`64M`), CPUs (`0.5`),
//! ports (`8080:80/tcp`), `KEY=VALUE` pairs, mounts, command words. Each
//! error says what form was expected; clap prefixes it with the flag's name.

use shoal_api::{mount, port_config, Mount, NamedPort, PortConfig, PortRange};

/// `250ms`, `5s`, `1m30s`, `2h`, or `0`. Returns milliseconds.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 250ms, 5s, 1m30s)");
    if text == "0" {
        return Ok(0);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add((number * unit_ms).round() as u64)
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// `64M`, `1.5G`, `512K`, `1024` (bytes); binary units.
pub fn memory_bytes(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a memory size (e.g. 64M, 1.5G, 512K, or bytes)");
    let t = text.trim();
    let t = t.strip_suffix(['b', 'B']).unwrap_or(t);
    let (number, factor) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * factor as f64;
    if bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// A decimal number of cores: `0.5`, `2`. Returns billionths of a core.
pub fn nano_cpus(text: &str) -> Result<i64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of CPUs (e.g. 0.5 or 2)"))?;
    if !value.is_finite() || !(0.0..=1e6).contains(&value) {
        return Err(format!("{text:?} is not a number of CPUs (e.g. 0.5 or 2)"));
    }
    Ok((value * 1e9).round() as i64)
}

/// `PUBLISHED:TARGET[/tcp|udp]`, or `TARGET[/proto]` alone; or the long
/// form `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`.
pub fn port(text: &str) -> Result<PortConfig, String> {
    if text.contains('=') {
        return long_port(text);
    }
    let bad = |why: &str| format!("{text:?}: {why} (expected PUBLISHED:TARGET[/tcp|udp])");
    let (ports, protocol) = match text.split_once('/') {
        Some((p, "tcp")) => (p, port_config::Protocol::Tcp),
        Some((p, "udp")) => (p, port_config::Protocol::Udp),
        Some((_, other)) => return Err(bad(&format!("unknown protocol {other:?}"))),
        None => (text, port_config::Protocol::Tcp),
    };
    let number = |p: &str| port_number(p).map_err(|why| bad(&why));
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (number(p)?, number(t)?),
        None => (0, number(ports)?),
    };
    Ok(PortConfig {
        name: String::new(),
        protocol: protocol as i32,
        target_port: target,
        published_port: published,
        publish_mode: port_config::PublishMode::Ingress as i32,
        host_ip: String::new(),
    })
}

/// `NAME` or `NAME:STATIC`: a named port each task gets on its node (a
/// free one of the cluster's range, or STATIC).
pub fn named_port(text: &str) -> Result<NamedPort, String> {
    let (name, static_port) = match text.split_once(':') {
        Some((name, port)) => (
            name,
            port_number(port).map_err(|why| format!("{text:?}: {why} (expected NAME[:PORT])"))?,
        ),
        None => (text, 0),
    };
    Ok(NamedPort {
        name: name.to_string(),
        static_port,
    })
}

/// `FIRST-LAST`: a range of ports, both in 1-65535, FIRST ≤ LAST.
pub fn port_range(text: &str) -> Result<PortRange, String> {
    let bad = |why: String| format!("{text:?}: {why} (expected FIRST-LAST, e.g. 20000-32000)");
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| bad("no '-' between two ports".into()))?;
    let (first, last) = (
        port_number(first).map_err(bad)?,
        port_number(last).map_err(bad)?,
    );
    if first > last {
        return Err(bad(format!("{first} is above {last}")));
    }
    Ok(PortRange { first, last })
}

/// A port number in 1-65535, or why not.
fn port_number(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a port number"))?;
    if n == 0 || n > 65_535 {
        return Err(format!("port {n} is out of range 1-65535"));
    }
    Ok(n)
}

fn long_port(text: &str) -> Result<PortConfig, String> {
    let bad = |why: &str| {
        format!(
            "{text:?}: {why} (expected published=P,target=T[,protocol=tcp|udp][,mode=ingress|host])"
        )
    };
    let number = |key: &str, p: &str| port_number(p).map_err(|why| bad(&format!("{key} {why}")));
    let mut port = PortConfig {
        protocol: port_config::Protocol::Tcp as i32,
        publish_mode: port_config::PublishMode::Ingress as i32,
        ..Default::default()
    };
    for field in text.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
        match (key.trim(), value.trim()) {
            ("published", v) => port.published_port = number("published", v)?,
            ("target", v) => port.target_port = number("target", v)?,
            ("protocol", "tcp") => port.protocol = port_config::Protocol::Tcp as i32,
            ("protocol", "udp") => port.protocol = port_config::Protocol::Udp as i32,
            ("mode", "ingress") => port.publish_mode = port_config::PublishMode::Ingress as i32,
            ("mode", "host") => port.publish_mode = port_config::PublishMode::Host as i32,
            ("protocol" | "mode", v) => return Err(bad(&format!("unknown {key} {v:?}"))),
            (k, _) => return Err(bad(&format!("unknown key {k:?}"))),
        }
    }
    if port.target_port == 0 {
        return Err(bad("target is required"));
    }
    Ok(port)
}

/// `KEY=VALUE` with a non-empty key.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `type=bind,source=/host,target=/in,readonly` as docker's `--mount`:
/// keys `type` (bind, volume, tmpfs; volume when absent), `source`/`src`,
/// `target`/`destination`/`dst`, `readonly`/`ro` (alone, or `=true|false`),
/// `tmpfs-size`.
pub fn mount(text: &str) -> Result<Mount, String> {
    let bad =
        |why: &str| format!("{text:?}: {why} (e.g. type=bind,source=/data,target=/data,readonly)");
    let mut m = Mount {
        r#type: mount::Type::Volume as i32,
        ..Default::default()
    };
    for part in text.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part.trim(), None),
        };
        match (key, value) {
            ("type", Some(v)) => {
                m.r#type = match v {
                    "bind" => mount::Type::Bind,
                    "volume" => mount::Type::Volume,
                    "tmpfs" => mount::Type::Tmpfs,
                    other => return Err(bad(&format!("unknown type {other:?}"))),
                } as i32
            }
            ("source" | "src", Some(v)) => m.source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => m.target = v.to_string(),
            ("readonly" | "ro", None) => m.read_only = true,
            ("readonly" | "ro", Some(v)) => {
                m.read_only = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => return Err(bad(&format!("readonly={other:?} is not true or false"))),
                }
            }
            ("tmpfs-size", Some(v)) => m.tmpfs_size_bytes = memory_bytes(v)?,
            (k, _) => return Err(bad(&format!("unknown key {k:?}"))),
        }
    }
    if m.target.is_empty() {
        return Err(bad("target is required"));
    }
    Ok(m)
}

/// Words as a shell splits them (`sh -c "echo hi"` → `sh`, `-c`, `echo
/// hi`): single and double quotes and backslashes, no expansion.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    out.push(w);
                }
            }
            '\\' => {
                let next = chars
                    .next()
                    .ok_or_else(|| format!("{text:?}: ends with a lone backslash"))?;
                word.get_or_insert_with(String::new).push(next);
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("{text:?}: a single quote is not closed")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("{text:?}: a double quote is not closed")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("{text:?}: a double quote is not closed")),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        out.push(w);
    }
    Ok(out)
}

/// `NAME=COUNT` for `service scale`.
pub fn scale(text: &str) -> Result<(String, i64), String> {
    let (name, count) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SERVICE=REPLICAS"))?;
    let count: i64 = count
        .parse()
        .map_err(|_| format!("{text:?}: {count:?} is not a number of replicas"))?;
    if name.is_empty() {
        return Err(format!("{text:?} is not SERVICE=REPLICAS"));
    }
    Ok((name.to_string(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go_durations() {
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert_eq!(duration_ms("5s"), Ok(5_000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1.5s"), Ok(1_500));
        assert_eq!(duration_ms("2h"), Ok(7_200_000));
        assert_eq!(duration_ms("0"), Ok(0));
        for bad in ["", "5", "5x", "s", "-1s", "1m30"] {
            assert!(duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_takes_binary_suffixes() {
        assert_eq!(memory_bytes("64M"), Ok(64 << 20));
        assert_eq!(memory_bytes("512k"), Ok(512 << 10));
        assert_eq!(memory_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(memory_bytes("1024"), Ok(1024));
        assert_eq!(memory_bytes("64MB"), Ok(64 << 20));
        for bad in ["", "M", "12Q", "-5M", "lots"] {
            assert!(memory_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpus_are_decimal_cores() {
        assert_eq!(nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(nano_cpus("2"), Ok(2_000_000_000));
        assert!(nano_cpus("-1").is_err());
        assert!(nano_cpus("half").is_err());
    }

    #[test]
    fn ports_take_the_long_form_with_host_mode() {
        let p = port("published=8080,target=80,mode=host,protocol=udp").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.publish_mode, port_config::PublishMode::Host as i32);
        assert_eq!(p.protocol, port_config::Protocol::Udp as i32);
        assert!(port("published=8080,target=80,mode=bridge")
            .unwrap_err()
            .contains("unknown mode \"bridge\""));
        assert!(port("published=8080")
            .unwrap_err()
            .contains("target is required"));
        assert!(port("published=8080,target=70000")
            .unwrap_err()
            .contains("target port 70000 is out of range"));
    }

    #[test]
    fn ports_take_published_target_and_protocol() {
        let p = port("8080:80/udp").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.protocol, port_config::Protocol::Udp as i32);
        assert_eq!(port("80").unwrap().published_port, 0);
        for bad in ["0:80", "80:70000", "80:80/sctp", "a:b", ""] {
            assert!(port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mounts_take_dockers_keys() {
        let m = mount("type=bind,source=/data,target=/in,readonly").unwrap();
        assert_eq!(m.r#type, mount::Type::Bind as i32);
        assert_eq!((m.source.as_str(), m.target.as_str()), ("/data", "/in"));
        assert!(m.read_only);
        let v = mount("src=cache,dst=/cache,ro=false").unwrap();
        assert_eq!(v.r#type, mount::Type::Volume as i32);
        assert!(!v.read_only);
        let t = mount("type=tmpfs,target=/tmp,tmpfs-size=64M").unwrap();
        assert_eq!(t.tmpfs_size_bytes, 64 << 20);
        assert!(mount("type=nfs,target=/x")
            .unwrap_err()
            .contains("unknown type \"nfs\""));
        assert!(mount("source=/x")
            .unwrap_err()
            .contains("target is required"));
        assert!(mount("target=/x,colour=red")
            .unwrap_err()
            .contains("unknown key \"colour\""));
    }

    #[test]
    fn words_split_as_a_shell_splits_them() {
        assert_eq!(words("sh -c 'echo hi'").unwrap(), ["sh", "-c", "echo hi"]);
        assert_eq!(words(r#"a "b c" d\ e"#).unwrap(), ["a", "b c", "d e"]);
        assert_eq!(words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(words("''").unwrap(), [""]);
        assert!(words("'open").unwrap_err().contains("not closed"));
    }

    #[test]
    fn scale_takes_name_equals_count() {
        assert_eq!(scale("web=4"), Ok(("web".into(), 4)));
        assert_eq!(scale("web=-1"), Ok(("web".into(), -1)));
        assert!(scale("web").is_err());
        assert!(scale("=3").is_err());
        assert!(scale("web=x").is_err());
    }
}
