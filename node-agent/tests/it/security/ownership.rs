//! Who may be killed: a process is the agent's own only by its spawn record or by its marker in
//! the environment of a process of the agent's own user, never by its command line; foreign
//! processes only with `--kill-foreign-processes`, and then the fewest needed, largest first,
//! among those old enough, idle long enough and matching `--kill-foreign-matching`.

use std::process::{Child, Command, Stdio};

use serde_json::json;
use vramkeeper_crds::GhostSourceKind;
use vramkeeper_e2e::{
    Agent, AgentOptions,
    agent::{SMALL_CATALOG, agent_bin},
    procs,
    wait::DEADLINE,
    wait_for, wait_until,
};

/// A child process ended when the test ends, whatever happens.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_process_of_another_user_imitating_a_worker_is_never_killed() {
    let agent = Agent::small(&["--kill-foreign-processes"]).await;
    let dir = tempfile::Builder::new()
        .prefix("vk-forged-")
        .tempdir()
        .unwrap();
    // World-writable, so that `nobody` can create its socket there.
    Command::new("chmod")
        .args(["0777", dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    // A copy `nobody` can run wherever the build lives (a checkout under /root, say).
    let exe = dir.path().join("vramkeeper-agent");
    std::fs::copy(agent_bin(), &exe).unwrap();
    // The agent's own binary run as a worker, as user nobody, with this agent's id on its
    // command line and its marker in its environment: everything but the agent's user.
    let forged = Guard(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(["worker", "--agent-id", &agent.agent_id])
            .args(["--instance", "forged", "--backend", "flex"])
            .arg("--socket")
            .arg(dir.path().join("w.sock"))
            .arg("--cache-dir")
            .arg(dir.path())
            .arg("--log-dir")
            .arg(dir.path())
            .env(
                "VRAMKEEPER_WORKER_MARKER",
                format!("{}:forged", agent.agent_id),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("setpriv"),
    );
    let pid = forged.0.id();
    wait_until("the forged worker to run", DEADLINE, || async {
        procs::is_alive(pid) && dir.path().join("w.sock").exists()
    })
    .await;
    let (_, free) = agent.post("/v1/gpu/free", json!({})).await;
    let (_, reset) = agent.post("/v1/gpu/reset", json!({})).await;
    for report in [&free, &reset] {
        let killed = report["killed"].as_array().unwrap();
        assert!(killed.iter().all(|k| k["pid"] != pid), "{report}");
    }
    assert!(procs::is_alive(pid), "the other user's process lives");
    let d = agent.device().await;
    assert!(
        !d.ghost.sources.iter().any(|s| s.pid == Some(pid)),
        "and it is not counted as this agent's: {:?}",
        d.ghost.sources
    );
}

#[tokio::test]
async fn an_orphan_is_named_by_the_model_it_served() {
    let mut agent = Agent::small(&["--auto-free", "false"]).await;
    agent
        .post("/v1/models/switch", json!({"model": "tiny-b"}))
        .await;
    let orphan = agent.workers()[0].pid;
    agent.kill_agent_only();
    let mut options = agent.restart_options();
    options.catalog = Some(SMALL_CATALOG.into());
    options.args = vec![
        "--enable-test-ops".into(),
        "--auto-free".into(),
        "false".into(),
    ];
    let again = Agent::start(options).await;
    let source = wait_for("the orphan to be attributed", DEADLINE, || async {
        again
            .device()
            .await
            .ghost
            .sources
            .into_iter()
            .find(|s| s.pid == Some(orphan))
    })
    .await;
    assert_eq!(source.kind, GhostSourceKind::OrphanWorker);
    assert_eq!(
        source.name.as_deref(),
        Some("tiny-b"),
        "from the spawn record"
    );
    let (_, r) = again.post("/v1/gpu/free", json!({})).await;
    assert_eq!(r["killed"][0]["pid"], orphan, "{r}");
    assert!(!procs::is_alive(orphan));
}

/// A python process whose command line says `stale-server`, holding `mib` MiB of touched
/// memory; `busy` keeps it using CPU. It creates `ready` once its memory is touched.
fn stale_server(mib: u64, busy: bool, ready: &std::path::Path) -> Guard {
    let work = if busy {
        "while True:\n    sum(range(20000)); time.sleep(0.002)"
    } else {
        "time.sleep(600)"
    };
    let code = format!(
        "import sys, time\nheld = b'\\x01' * ({mib} << 20)\nopen(sys.argv[3], 'w').close()\n{work}\n"
    );
    Guard(
        Command::new("python3")
            .args(["-c", &code, "stale-server", &mib.to_string()])
            .arg(ready)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    )
}

#[tokio::test]
async fn a_free_ends_the_fewest_idle_matching_foreign_processes_largest_first() {
    // The servers are up, their memory touched, before the agent first sees them: from then on
    // the agent judges them alike (first seen at the same tick; activity unknown before).
    let dir = tempfile::tempdir().unwrap();
    let ready = |n: &str| dir.path().join(n);
    let big = stale_server(200, false, &ready("big"));
    let bystander = stale_server(50, false, &ready("bystander"));
    let busy = stale_server(100, true, &ready("busy"));
    let pids = [big.0.id(), bystander.0.id(), busy.0.id()];
    wait_until(
        "the stale servers' memory to be touched",
        DEADLINE,
        || async {
            ["big", "bystander", "busy"]
                .iter()
                .all(|n| ready(n).exists())
        },
    )
    .await;
    let agent = Agent::start(AgentOptions {
        catalog: Some(SMALL_CATALOG.into()),
        args: [
            "--kill-foreign-processes",
            "--kill-foreign-matching",
            "stale-server",
            "--zombie-threshold-mib",
            "256",
            "--zombie-persist-s",
            "1",
            "--auto-free",
            "false",
            "--sample-ms",
            "100",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    wait_until(
        "the stale servers to show as foreign ghost",
        DEADLINE,
        || async {
            let d = agent.device().await;
            pids.iter().all(|p| {
                d.ghost.sources.iter().any(|s| {
                    s.pid == Some(*p) && s.kind == GhostSourceKind::ForeignProcess && s.mb > 40.0
                })
            })
        },
    )
    .await;
    // Until they are old and idle for the persistence time, nothing is ended.
    let report = wait_for("a free that ends something", DEADLINE, || async {
        let (_, r) = agent.post("/v1/gpu/free", json!({})).await;
        (!r["killed"].as_array().unwrap().is_empty()).then_some(r)
    })
    .await;
    let killed: Vec<u64> = report["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        killed,
        [pids[0] as u64],
        "only the largest was needed: {report}"
    );
    let reason_of = |pid: u32| {
        report["spared"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["pid"] == pid)
            .and_then(|s| s["reason"].as_str().map(String::from))
            .unwrap_or_default()
    };
    assert!(
        reason_of(pids[1]).contains("under the threshold"),
        "{report}"
    );
    assert!(reason_of(pids[2]).contains("used the device"), "{report}");
    assert!(procs::is_alive(pids[1]) && procs::is_alive(pids[2]));
    drop((big, bystander, busy));
}
