//! The status page in real headless Chromium: a real agent (three tiny models, a token, test
//! ops, zombie detection at 50 MiB after 1 s, automatic freeing off) driven by
//! `tests/browser/status-page.mjs` through playwright-core. Screenshots and the browser's log go
//! to `artifacts/status-page/`.
//!
//! Needs Node.js, Debian's Chromium and playwright-core (`scripts/install-test-tools` installs
//! them; `scripts/test` runs it first). Without them the test fails, saying what is missing.

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vramkeeper_e2e::{Agent, AgentOptions, agent::SMALL_CATALOG, procs};

const TOKEN: &str = "status-page-test-token";
/// The whole browser scenario; each of its waits has its own (long) deadline too.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(540);
const INSTALL_HINT: &str = "scripts/install-test-tools installs it (scripts/test runs that first)";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Node.js, Chromium and playwright-core, found or the test fails naming what is missing.
struct BrowserTools {
    node: PathBuf,
    chromium: PathBuf,
    playwright: PathBuf,
}

impl BrowserTools {
    fn find() -> Self {
        let node = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("node is not on PATH: the status page test needs Node.js; {INSTALL_HINT}")
            });
        let chromium = std::env::var_os("VK_CHROMIUM")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        assert!(
            chromium.is_file(),
            "{} is missing: the status page test needs Debian's chromium; {INSTALL_HINT}",
            chromium.display()
        );
        let mut module_dirs: Vec<PathBuf> = std::env::var_os("NODE_PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .collect();
        module_dirs.push(workspace().join(".tools/node/node_modules"));
        let playwright = module_dirs
            .iter()
            .map(|dir| dir.join("playwright-core"))
            .find(|p| p.join("package.json").is_file())
            .unwrap_or_else(|| {
                panic!(
                    "playwright-core is not installed (looked in {module_dirs:?}); {INSTALL_HINT}"
                )
            });
        BrowserTools {
            node,
            chromium,
            playwright,
        }
    }
}

/// The Node process (leader of its own process group) and the Chromium it starts: ended, all
/// of them, when this is dropped, whether the test passed, failed or timed out.
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    async fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Chromium runs in a process group of its own (Playwright's choice): find it by the
    /// profile directory this test made for it.
    fn chromium_pids(&self) -> Vec<u32> {
        let marker = self.profile.path().to_string_lossy().into_owned();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
            .filter(|pid| procs::is_alive(*pid))
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        if matches!(self.child.try_wait(), Ok(None)) {
            // Playwright closes its browser on SIGTERM; give it a moment, then insist.
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
        for pid in self.chromium_pids() {
            procs::kill(pid);
        }
    }
}

fn catalog() -> String {
    format!(
        "{SMALL_CATALOG}
[[model]]
name = \"tiny-c\"
kind = \"synthetic\"
params = 3_000_000
layers = 2
vocab = 512
context = 64
seed = 3
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let tools = BrowserTools::find();
    let agent = Agent::start(AgentOptions {
        args: [
            "--enable-test-ops",
            "--zombie-threshold-mib",
            "50",
            "--zombie-persist-s",
            "1",
            "--auto-free",
            "false",
        ]
        .map(String::from)
        .to_vec(),
        catalog: Some(catalog()),
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;

    let artifacts = workspace().join("artifacts/status-page");
    std::fs::create_dir_all(&artifacts).expect("create artifacts/status-page");
    let log_path = artifacts.join("browser.log");
    let log = File::create(&log_path).expect("create browser.log");
    let profile = tempfile::Builder::new()
        .prefix("vk-chromium-")
        .tempdir()
        .expect("a Chromium profile directory");
    let child = Command::new(&tools.node)
        .arg(workspace().join("tests/browser/status-page.mjs"))
        .env("VK_URL", &agent.url)
        .env("VK_TOKEN", TOKEN)
        .env("VK_ARTIFACTS", &artifacts)
        .env("VK_PROFILE", profile.path())
        .env("VK_PLAYWRIGHT", &tools.playwright)
        .env("VK_CHROMIUM", &tools.chromium)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start node");
    let mut browser = Browser { child, profile };
    let status = browser.wait(SCRIPT_DEADLINE).await;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    let Some(status) = status else {
        drop(browser);
        panic!(
            "the browser scenario did not finish within {SCRIPT_DEADLINE:?}; its log:\n{output}\nthe agent's log:\n{}",
            agent.log()
        );
    };
    let result: Value = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| {
            panic!("the browser scenario printed no result ({status}); its log:\n{output}")
        });
    assert!(
        status.success() && result["ok"] == true,
        "the browser scenario failed ({status}): {}\nsteps done: {}\nits log:\n{output}\nthe agent's log:\n{}",
        result["error"],
        result["steps"],
        agent.log()
    );
    assert_eq!(
        result["consoleErrors"],
        Value::Array(vec![]),
        "console errors"
    );
    assert!(
        result["steps"].as_array().is_some_and(|s| s.len() >= 10),
        "every step ran: {}",
        result["steps"]
    );
    for shot in [
        "01-states-1280",
        "02-zombie-1280",
        "03-zombie-390",
        "04-test-load-1280",
        "05-test-load-390",
        "06-overview-1280",
    ] {
        let path = artifacts.join(format!("{shot}.png"));
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(size > 10_000, "{} is missing or empty", path.display());
    }
    drop(browser);
    assert!(
        agent.workers().len() <= 1,
        "at most the active model's worker is left"
    );
}
