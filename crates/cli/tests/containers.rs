//! Services of images, run as containers on the machine's Docker Engine by
//! the real daemon, driven by the real CLI. Each test makes the local
//! busybox image itself (no registry here) and skips, saying so, where no
//! engine answers; every container a test's node made is removed after it.

mod harness;

use harness::{all_tasks, docker, test_image, wait_until, Containers, Daemon};

/// The guard that removes a daemon's containers, and the daemon: bound in
/// this order, the daemon is dropped (killed) first, so it makes none
/// after the guard removed them.
fn node(dir: &std::path::Path) -> (Containers, Daemon) {
    let d = Daemon::start(dir);
    let me: serde_json::Value = serde_json::from_str(&d.ok(&["node", "inspect", "self"])).unwrap();
    let node_id = me[0]["id"].as_str().unwrap().to_string();
    (Containers { node_id }, d)
}

fn running_tasks(d: &Daemon, service: &str) -> Vec<serde_json::Value> {
    all_tasks(d, service)
        .into_iter()
        .filter(|t| t["status"]["state"] == "RUNNING" && t["desired_state"] == "RUNNING")
        .collect()
}

/// Creates `service`, one container sleeping with no restart delay, and
/// returns its task once it runs.
fn sleeper(d: &Daemon, service: &str, image: &str) -> serde_json::Value {
    d.ok(&[
        "service",
        "create",
        "--name",
        service,
        "--image",
        image,
        "--restart-delay",
        "0s",
        "--",
        "sleep",
        "3600",
    ]);
    wait_until("the container runs", || {
        running_tasks(d, service).len() == 1
    });
    running_tasks(d, service).remove(0)
}

/// Waits until a task other than `first` runs for `service`; returns
/// `first` as it ended.
fn replaced(d: &Daemon, service: &str, first: &serde_json::Value) -> serde_json::Value {
    wait_until("a new task replaces the first", || {
        running_tasks(d, service)
            .first()
            .is_some_and(|t| t["id"] != first["id"])
    });
    let old = all_tasks(d, service)
        .into_iter()
        .find(|t| t["id"] == first["id"])
        .expect("the first task is kept in the history");
    assert_eq!(old["status"]["state"], "FAILED", "{old}");
    old
}

fn container_of(t: &serde_json::Value) -> String {
    t["status"]["container_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_container_sees_its_env_mounts_and_hostname_and_the_engine_enforces_its_limits() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (containers, d) = node(&tmp.path().join("n"));
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("greeting"), "from the host").unwrap();
    // The container runs as nobody: it must reach the file.
    use std::os::unix::fs::PermissionsExt;
    for dir in [tmp.path(), data.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bind = format!("type=bind,source={},target=/data,readonly", data.display());
    d.ok(&[
        "service",
        "create",
        "--name",
        "box",
        "--image",
        &image,
        "--env",
        "COLOUR=teal",
        "--mount",
        &bind,
        "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=8M",
        "--hostname",
        "boxy",
        "--limit-memory",
        "64M",
        "--limit-cpu",
        "0.5",
        "--limit-pids",
        "40",
        "--container-label",
        "team=storage",
        "--stop-signal",
        "SIGUSR1",
        "--cap-drop",
        "NET_RAW",
        "--init",
        "--read-only",
        "--user",
        "nobody",
        "--workdir",
        "/scratch",
        "--entrypoint",
        "sh -c",
        "--",
        "echo colour=$COLOUR host=$(hostname) data=$(cat /data/greeting) uid=$(id -u) dir=$(pwd); touch /etc/x 2>/dev/null || echo rootfs=ro; grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs=yes; sleep 3600",
    ]);
    wait_until("the container runs", || running_tasks(&d, "box").len() == 1);
    let task = running_tasks(&d, "box").remove(0);
    let id = container_of(&task);
    assert!(!id.is_empty(), "the task names its container: {task}");
    assert_eq!(
        containers.of_task(task["id"].as_str().unwrap()).as_deref(),
        Some(id.as_str())
    );
    wait_until("the container's output reaches service logs", || {
        d.ok(&["service", "logs", "box"]).contains("tmpfs=yes")
    });
    let logs = d.ok(&["service", "logs", "box"]);
    assert!(
        logs.contains("colour=teal host=boxy data=from the host uid=65534 dir=/scratch"),
        "{logs}"
    );
    assert!(logs.contains("rootfs=ro"), "{logs}");
    let format = "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{.Config.StopSignal}} {{.HostConfig.Init}} {{json .HostConfig.CapDrop}} {{index .Config.Labels \"team\"}} {{index .Config.Labels \"com.shoal.service.id\"}}";
    let seen = docker(&["inspect", "--format", format, &id]);
    let service_id = task["service_id"].as_str().unwrap();
    assert_eq!(
        seen,
        format!("67108864 500000000 40 SIGUSR1 true [\"NET_RAW\"] storage {service_id}")
    );
}

#[test]
fn a_host_mode_published_port_reaches_the_containers_target_port() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    };
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--image",
        &image,
        "--publish",
        &format!("published={port},target=8000,mode=host"),
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo served-by-shoal > /tmp/www/index.html && exec httpd -f -p 8000 -h /tmp/www",
    ]);
    wait_until("the container runs", || running_tasks(&d, "web").len() == 1);
    let fetch = || -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    };
    wait_until("the published port answers", || {
        fetch().is_some_and(|b| b.contains("served-by-shoal"))
    });
}

#[test]
fn a_killed_container_is_replaced_and_its_exit_code_kept() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    let first = sleeper(&d, "kept", &image);
    docker(&["kill", &container_of(&first)]);
    let old = replaced(&d, "kept", &first);
    assert_eq!(old["status"]["exit_code"], 137, "{old}");
    assert_eq!(old["status"]["err"], "exit status 137", "{old}");
}

#[test]
fn exit_codes_and_an_oom_kill_reach_the_task_status() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    for (name, limit, script) in [
        ("three", "64M", "exit 3"),
        ("greedy", "8M", "a=x; while true; do a=\"$a$a\"; done"),
    ] {
        d.ok(&[
            "service",
            "create",
            "--name",
            name,
            "--image",
            &image,
            "--limit-memory",
            limit,
            "--restart-condition",
            "none",
            "--",
            "sh",
            "-c",
            script,
        ]);
    }
    let failed = |service: &str| {
        all_tasks(&d, service)
            .into_iter()
            .find(|t| t["status"]["state"] == "FAILED")
    };
    wait_until("both fail", || {
        failed("three").is_some() && failed("greedy").is_some()
    });
    let three = failed("three").unwrap();
    assert_eq!(three["status"]["exit_code"], 3);
    assert_eq!(three["status"]["err"], "exit status 3");
    let greedy = failed("greedy").unwrap();
    assert_eq!(greedy["status"]["exit_code"], 137);
    assert_eq!(
        greedy["status"]["err"],
        "exit status 137 (OOM killed: the container went over its memory limit)"
    );
}

#[test]
fn an_image_the_node_lacks_and_cannot_pull_is_rejected_naming_it() {
    let Some(_image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "absent",
        "--image",
        "shoal-test/absent:1",
    ]);
    wait_until("the task is rejected", || {
        all_tasks(&d, "absent")
            .iter()
            .any(|t| t["status"]["state"] == "REJECTED")
    });
    let rejected = all_tasks(&d, "absent")
        .into_iter()
        .find(|t| t["status"]["state"] == "REJECTED")
        .unwrap();
    let err = rejected["status"]["err"].as_str().unwrap();
    assert!(
        err.starts_with("image \"shoal-test/absent:1\" not found on node ")
            && err.contains(" and could not be pulled: "),
        "{err}"
    );
    let ps = d.ok(&["service", "ps", "-a", "absent"]);
    assert!(ps.contains("could not be pulled"), "{ps}");
}

#[test]
fn a_restarted_daemon_adopts_its_containers_and_removes_those_that_should_not_exist() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let (containers, mut d) = node(&dir);
    d.ok(&[
        "service",
        "create",
        "--name",
        "stay",
        "--replicas",
        "2",
        "--image",
        &image,
        "--",
        "sh",
        "-c",
        "echo up; sleep 3600",
    ]);
    wait_until("both run", || running_tasks(&d, "stay").len() == 2);
    let before: std::collections::BTreeSet<String> =
        running_tasks(&d, "stay").iter().map(container_of).collect();
    d.kill9();
    // A container of this node for a task no manager knows: it must go.
    let stray = docker(&[
        "run",
        "-d",
        "--label",
        &format!("com.shoal.node.id={}", containers.node_id),
        "--label",
        "com.shoal.task.id=nosuchtask",
        &image,
        "sleep",
        "3600",
    ]);
    assert!(!stray.is_empty());
    let d = Daemon::start(&dir);
    wait_until("the stray container is removed", || {
        !containers.ids().contains(&stray)
    });
    harness::after_an_orchestrator_pass(&d);
    let after: std::collections::BTreeSet<String> =
        running_tasks(&d, "stay").iter().map(container_of).collect();
    assert_eq!(after, before, "the same containers, none restarted");
    let mut alive = containers.ids();
    alive.sort();
    assert_eq!(
        alive,
        before.iter().cloned().collect::<Vec<_>>(),
        "no other container of the node"
    );
    // Their output is kept once, not copied again by the new agent.
    let ups = || {
        d.ok(&["service", "logs", "--raw", "stay"])
            .lines()
            .filter(|l| l.trim() == "up")
            .count()
    };
    wait_until("both containers' first line is in the logs", || ups() >= 2);
    harness::after_an_orchestrator_pass(&d);
    assert_eq!(ups(), 2);
}

#[test]
fn a_container_removed_behind_shoals_back_is_reported_and_replaced() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    let first = sleeper(&d, "gone", &image);
    docker(&["rm", "-f", &container_of(&first)]);
    let old = replaced(&d, "gone", &first);
    let err = old["status"]["err"].as_str().unwrap_or_default();
    assert!(
        err.starts_with(&format!(
            "container {} was removed outside Shoal",
            container_of(&first)
        )),
        "{err}"
    );
}

#[test]
fn a_container_removed_while_its_daemon_was_down_is_reported_and_replaced() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let (containers, mut d) = node(&dir);
    d.ok(&[
        "service", "create", "--name", "lost", "--image", &image, "--", "sleep", "3600",
    ]);
    wait_until("the container runs", || {
        running_tasks(&d, "lost").len() == 1
    });
    let first = running_tasks(&d, "lost").remove(0);
    d.kill9();
    docker(&["rm", "-f", &container_of(&first)]);
    let d = Daemon::start(&dir);
    let old = replaced(&d, "lost", &first);
    assert_eq!(
        old["status"]["err"],
        "its process or container ended, or was removed, while the agent was not running"
    );
    assert_eq!(containers.ids().len(), 1, "only the replacement");
}

#[test]
fn health_checks_run_inside_the_container_and_an_images_own_healthcheck_counts() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // An image whose HEALTHCHECK passes once /tmp/ready exists.
    let context = tmp.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {image}\nHEALTHCHECK --interval=300ms --retries=2 CMD [\"test\", \"-f\", \"/tmp/ready\"]\n"
        ),
    )
    .unwrap();
    let tag = "shoal-test/checked:1";
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(&context)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let (_containers, d) = node(&tmp.path().join("n"));
    // The image's check: healthy, the file being there.
    d.ok(&[
        "service",
        "create",
        "--name",
        "own",
        "--image",
        tag,
        "--",
        "sh",
        "-c",
        "touch /tmp/ready; exec sleep 3600",
    ]);
    // The image's check, the file never there: unhealthy, and failed.
    d.ok(&[
        "service",
        "create",
        "--name",
        "own-failing",
        "--image",
        tag,
        "--stop-grace-period",
        "1s",
        "--",
        "sleep",
        "3600",
    ]);
    // The spec's check, run inside the container, replaces the image's: it
    // never passes there.
    d.ok(&[
        "service",
        "create",
        "--name",
        "spec",
        "--image",
        tag,
        "--health-cmd",
        "test -f /tmp/never",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--stop-grace-period",
        "1s",
        "--",
        "sh",
        "-c",
        "touch /tmp/ready; exec sleep 3600",
    ]);
    // No check at all: the image's is switched off too.
    d.ok(&[
        "service",
        "create",
        "--name",
        "off",
        "--image",
        tag,
        "--no-healthcheck",
        "--",
        "sleep",
        "3600",
    ]);
    wait_until("the image's check makes its task healthy", || {
        running_tasks(&d, "own")
            .iter()
            .any(|t| t["status"]["health"] == "HEALTHY")
    });
    let unhealthy = |service: &str| {
        all_tasks(&d, service).iter().any(|t| {
            t["status"]["state"] == "FAILED"
                && t["status"]["err"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("unhealthy"))
        })
    };
    wait_until("the image's failing check fails its task", || {
        unhealthy("own-failing")
    });
    wait_until("the spec's failing check fails its task", || {
        unhealthy("spec")
    });
    wait_until("the unchecked task runs", || {
        running_tasks(&d, "off").len() == 1
    });
    harness::after_an_orchestrator_pass(&d);
    let off = running_tasks(&d, "off").remove(0);
    assert!(
        off["status"]["health"].is_null() || off["status"]["health"] == "NONE",
        "{off}"
    );
    // A restarted daemon finds the image's check again for the container it
    // adopts: the file going makes the adopted task unhealthy.
    let own = running_tasks(&d, "own").remove(0);
    let mut d = d;
    d.kill9();
    let d = Daemon::start(&tmp.path().join("n"));
    wait_until("the adopted task is running again", || {
        running_tasks(&d, "own")
            .iter()
            .any(|t| t["id"] == own["id"])
    });
    docker(&["exec", &container_of(&own), "rm", "/tmp/ready"]);
    wait_until("the adopted task fails its image's check", || {
        all_tasks(&d, "own").iter().any(|t| {
            t["id"] == own["id"]
                && t["status"]["state"] == "FAILED"
                && t["status"]["err"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("unhealthy"))
        })
    });
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", tag])
        .output();
}

/// A unix socket that forwards to the engine's, and can go away as an
/// engine that restarts does: every connection cut, nothing answered.
struct EngineProxy {
    path: std::path::PathBuf,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EngineProxy {
    const ENGINE: &'static str = "/var/run/docker.sock";

    fn start(path: &std::path::Path) -> EngineProxy {
        let proxy = EngineProxy {
            path: path.to_path_buf(),
            open: Default::default(),
            running: Default::default(),
        };
        proxy.listen();
        proxy
    }

    fn listen(&self) {
        use std::sync::atomic::Ordering;
        let _ = std::fs::remove_file(&self.path);
        let listener = std::os::unix::net::UnixListener::bind(&self.path).unwrap();
        self.running.store(true, Ordering::SeqCst);
        let (open, running) = (self.open.clone(), self.running.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !running.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                let Ok(engine) = std::os::unix::net::UnixStream::connect(Self::ENGINE) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), engine.try_clone().unwrap()),
                    (engine.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                open.extend([client, engine]);
            }
        });
    }

    /// The engine "goes away": every connection cut, none taken.
    fn stop(&self) {
        use std::sync::atomic::Ordering;
        self.running.store(false, Ordering::SeqCst);
        // Wakes the accept loop, which sees it must end.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_container_that_ends_while_the_engine_is_away_is_reported_once_it_is_back() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("engine.sock");
    let proxy = EngineProxy::start(&socket);
    let host = format!("unix://{}", socket.display());
    let d = Daemon::start_env(
        &tmp.path().join("n"),
        &["--listen-addr", "127.0.0.1:0"],
        &[("DOCKER_HOST", &host)],
    );
    let me: serde_json::Value = serde_json::from_str(&d.ok(&["node", "inspect", "self"])).unwrap();
    let _containers = Containers {
        node_id: me[0]["id"].as_str().unwrap().to_string(),
    };
    let d = d;
    d.ok(&[
        "service",
        "create",
        "--name",
        "through",
        "--image",
        &image,
        "--restart-delay",
        "0s",
        "--",
        "sh",
        "-c",
        "echo before; sleep 3600",
    ]);
    wait_until("the container runs", || {
        running_tasks(&d, "through").len() == 1
    });
    let first = running_tasks(&d, "through").remove(0);
    // The engine goes away (as it does while it restarts), and the
    // container ends meanwhile.
    proxy.stop();
    docker(&["kill", &container_of(&first)]);
    proxy.listen();
    wait_until("the task is failed with its exit and replaced", || {
        let replaced = running_tasks(&d, "through")
            .first()
            .is_some_and(|t| t["id"] != first["id"]);
        replaced
            && all_tasks(&d, "through").iter().any(|t| {
                t["id"] == first["id"]
                    && t["status"]["state"] == "FAILED"
                    && t["status"]["err"] == "exit status 137"
            })
    });
    // The new container's output is kept as the first one's was.
    wait_until("both containers' output is in the logs", || {
        d.ok(&["service", "logs", "--raw", "through"])
            .lines()
            .filter(|l| l.trim() == "before")
            .count()
            == 2
    });
}

#[test]
fn a_stop_sends_the_stop_signal_then_kills_after_the_grace_period() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_containers, d) = node(&tmp.path().join("n"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "stubborn",
        "--image",
        &image,
        "--init",
        "--stop-signal",
        "SIGUSR1",
        "--stop-grace-period",
        "1s",
        "--",
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; echo trapping; while true; do sleep 0.1; done",
    ]);
    wait_until("it runs and traps", || {
        running_tasks(&d, "stubborn").len() == 1
            && d.ok(&["service", "logs", "stubborn"]).contains("trapping")
    });
    let first = running_tasks(&d, "stubborn").remove(0);
    let old = container_of(&first);
    d.ok(&["service", "update", "--force", "stubborn"]);
    wait_until("the old container was stopped", || {
        docker(&["inspect", "--format", "{{.State.Status}}", &old]) == "exited"
    });
    // It ignored the stop signal (it only printed), so the grace period
    // ended with SIGKILL.
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &old]),
        "137"
    );
    wait_until("the signal reached the program", || {
        d.ok(&["service", "logs", "stubborn"]).contains("got-usr1")
    });
}

#[test]
fn service_rm_removes_the_containers() {
    let Some(image) = test_image() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (containers, d) = node(&tmp.path().join("n"));
    d.ok(&[
        "service",
        "create",
        "--name",
        "brief",
        "--replicas",
        "3",
        "--image",
        &image,
        "--stop-grace-period",
        "1s",
        "--",
        "sleep",
        "3600",
    ]);
    wait_until("three run", || running_tasks(&d, "brief").len() == 3);
    assert_eq!(containers.ids().len(), 3);
    d.ok(&["service", "rm", "brief"]);
    wait_until("no container is left", || containers.ids().is_empty());
}

#[test]
fn a_node_without_an_engine_says_so_and_gets_no_image_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_env(
        &tmp.path().join("n"),
        &["--listen-addr", "127.0.0.1:0"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let me: serde_json::Value = serde_json::from_str(&d.ok(&["node", "inspect", "self"])).unwrap();
    let description = &me[0]["description"];
    assert_eq!(description["engine_version"], "");
    let warnings = description["warnings"].to_string();
    assert!(
        warnings.contains("no Docker Engine at unix:///nonexistent/docker.sock")
            && warnings.contains("this node runs processes only"),
        "{warnings}"
    );
    d.ok(&[
        "service",
        "create",
        "--name",
        "boxed",
        "--image",
        "shoal-test/busybox:1",
    ]);
    wait_until("the task says why it waits", || {
        all_tasks(&d, "boxed").iter().any(|t| {
            t["status"]["err"] == "no suitable node (no Docker Engine for the image on 1 node)"
        })
    });
    // Processes still run there.
    d.ok(&["service", "create", "--name", "plain", "--", "sleep", "60"]);
    wait_until("the process runs", || running_tasks(&d, "plain").len() == 1);
}

#[test]
fn container_flags_are_refused_for_a_process_and_bad_ones_name_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("n"));
    for (args, expected) in [
        (
            vec!["--mount", "type=tmpfs,target=/x", "--", "sleep", "1"],
            "mount: only a container takes --mount: give the service an --image",
        ),
        (
            vec!["--hostname", "h", "--", "sleep", "1"],
            "hostname: only a container takes --hostname",
        ),
        (
            vec!["--limit-pids", "5", "--", "sleep", "1"],
            "limit_pids: only a container takes --limit-pids",
        ),
        (
            vec!["--cap-add", "NET_ADMIN", "--", "sleep", "1"],
            "cap_add: only a container takes --cap-add",
        ),
        (
            vec![
                "--image",
                "busybox",
                "--mount",
                "type=bind,source=rel,target=/x",
            ],
            "mount[0]: a bind mount's source \"rel\" must be an absolute path on the node",
        ),
        (
            vec![
                "--image",
                "busybox",
                "--mount",
                "type=volume,target=relative",
            ],
            "mount[0]: target \"relative\" must be an absolute path other than /",
        ),
        (
            vec!["--image", "Busy Box"],
            "image: \"Busy Box\" is not an image reference",
        ),
        (
            vec!["--image", "busybox", "--stop-signal", "SIGNOPE"],
            "stop_signal: \"SIGNOPE\" is not a signal",
        ),
        (
            vec!["--image", "busybox", "--cap-add", "NET ADMIN"],
            "cap_add: \"NET ADMIN\" is not a capability",
        ),
        (
            vec![
                "--image",
                "busybox",
                "--container-label",
                "com.shoal.task.id=x",
            ],
            "container_label: \"com.shoal.task.id\": keys starting with com.shoal. are Shoal's own",
        ),
        (
            vec!["--image", "busybox", "--limit-pids", "-1"],
            "limit_pids: must not be negative, got -1",
        ),
        (
            vec!["--image", "busybox", "--entrypoint", "sh -c 'open"],
            "--entrypoint: \"sh -c 'open\": a single quote is not closed",
        ),
    ] {
        let mut all = vec!["service", "create", "--name", "bad"];
        all.extend(args.iter().copied());
        let err = d.fails(&all);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A malformed --mount is refused before anything is sent.
    let out = d.shoal(&[
        "service",
        "create",
        "--name",
        "bad",
        "--image",
        "busybox",
        "--mount",
        "type=nfs,target=/x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mount") && err.contains("unknown type \"nfs\""),
        "{err}"
    );
    assert!(d.ok(&["service", "ls", "-q"]).trim().is_empty());
}
