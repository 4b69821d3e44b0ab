//! The container executor on the machine's Docker Engine, without a
//! cluster: what a restarted agent finds left by the one before. Skips,
//! saying so, where no engine answers or the test image cannot be made.

use std::time::Duration;

use shoal_agent::container::ContainerExecutor;
use shoal_agent::{Engine, Executor};
use shoal_api::{Annotations, Runtime, Task, TaskSpec};

/// The engine and the test image, or `None` (said) to skip; with
/// `SHOAL_REQUIRE_ENGINE` set a skip is a failure.
async fn engine_and_image() -> Option<(Engine, String)> {
    let skip = |why: String| {
        assert!(
            std::env::var_os("SHOAL_REQUIRE_ENGINE").is_none(),
            "SHOAL_REQUIRE_ENGINE is set, but {why}"
        );
        eprintln!("SKIPPED: {why}");
    };
    let engine = match Engine::detect().await {
        Ok(engine) => engine,
        Err(e) => {
            skip(e.to_string());
            return None;
        }
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/busybox-image.sh");
    let made = std::process::Command::new("bash")
        .arg(script)
        .output()
        .unwrap();
    if !made.status.success() {
        skip(format!(
            "the test image could not be made: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
        return None;
    }
    Some((
        engine,
        String::from_utf8_lossy(&made.stdout).trim().to_string(),
    ))
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_an_earlier_prepare_left_under_the_tasks_name_is_replaced() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let task_id = format!("leftover{}", std::process::id());
    let name = format!("box.1.{task_id}");
    let _removed = Removed(vec![name.clone()]);
    let stale = docker(&["create", "--name", &name, &image, "sleep", "1"]);
    assert!(!stale.is_empty());
    let task = Task {
        id: task_id.clone(),
        annotations: Some(Annotations {
            name: "box.1".into(),
            labels: Default::default(),
        }),
        spec: Some(TaskSpec {
            runtime: Some(Runtime {
                image: image.clone(),
                command: vec!["sh".into(), "-c".into(), "exit 7".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut executor = ContainerExecutor::new(&engine, tmp.path(), 1 << 20, &task);
    executor.prepare().await.unwrap();
    let started = executor.start().await.unwrap();
    assert_ne!(
        started.container_id, stale,
        "a new container, not the stale one"
    );
    let exit = tokio::time::timeout(Duration::from_secs(60), executor.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.exit_code, 7);
    executor.remove().await.unwrap();
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &format!("name={name}")]),
        ""
    );
}

/// Removes the containers named, when dropped (a failed assertion must not
/// leave them behind).
struct Removed(Vec<String>);

impl Drop for Removed {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", name])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_created_but_never_started_is_no_leftover_and_has_no_end_to_wait_for() {
    let Some((engine, image)) = engine_and_image().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let node = format!("node{}", std::process::id());
    let name = format!("never.{node}");
    let _removed = Removed(vec![name.clone()]);
    let created = docker(&[
        "create",
        "--name",
        &name,
        "--label",
        &format!("com.shoal.node.id={node}"),
        "--label",
        "com.shoal.task.id=never",
        &image,
        "sleep",
        "60",
    ]);
    assert!(!created.is_empty());
    // Adopted directly (as a leftover list from before this fix would):
    // its wait says it never started instead of "exit status 0".
    let task = Task {
        id: "never".into(),
        ..Default::default()
    };
    let mut adopted = ContainerExecutor::adopt(&engine, tmp.path(), 1 << 20, &task, &created);
    let err = adopted.wait().await.unwrap_err();
    assert_eq!(err.0, "the container was created but never started");
    // The node's leftovers leave it out, and remove it.
    let found = shoal_agent::container::leftovers(&engine, &node)
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &format!("name={name}")]),
        ""
    );
}
