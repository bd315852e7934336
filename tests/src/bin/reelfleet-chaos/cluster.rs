//! A three-node RabbitMQ cluster of the case's own (rf1..rf3@localhost on
//! AMQP ports 5681-5683, distribution ports 25681-25683, data, logs and pid
//! files under the case's folder, its own Erlang cookie, no plugins), so a
//! node can be killed without touching the shared broker on 5672. Dropping
//! the [`Cluster`] stops and removes every node, whatever happened.

use anyhow::{bail, Context};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

pub(crate) struct Cluster {
    dir: PathBuf,
    /// Node numbers started (1-based), so Drop stops only what exists.
    started: Vec<u8>,
    /// The `rabbitmq-server` processes we spawned (they exec into the VM).
    children: Vec<std::process::Child>,
}

pub(crate) fn node(i: u8) -> String {
    format!("rf{i}@localhost")
}

pub(crate) fn amqp_url(i: u8) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + u16::from(i))
}

impl Cluster {
    /// Starts three nodes and joins rf2 and rf3 to rf1.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("RFCHAOS{}", uuid::Uuid::new_v4().simple()))?;
        let mut perms = std::fs::metadata(&cookie)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&cookie, perms)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let mut cluster = Cluster { dir: dir.to_path_buf(), started: Vec::new(), children: Vec::new() };
        for i in 1..=3 {
            if cluster.ctl(i, &["status"]).is_ok_and(|o| o.status.success()) {
                bail!("a node {} already answers: not starting a second one", node(i));
            }
            cluster.boot(i)?;
        }
        for i in 1..=3 {
            cluster.await_startup(i, Duration::from_secs(90)).await?;
        }
        for i in 2..=3 {
            for args in [&["stop_app"][..], &["join_cluster", &node(1)], &["start_app"]] {
                cluster.ctl_ok(i, args)?;
            }
        }
        let status = cluster.ctl_ok(1, &["cluster_status", "--formatter", "json"])?;
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).context("cluster_status json")?;
        let running = v["running_nodes"].as_array().map_or(0, Vec::len);
        if running != 3 {
            bail!("the cluster has {running} running nodes, not 3: {v}");
        }
        Ok(cluster)
    }

    fn node_dir(&self, i: u8) -> PathBuf {
        self.dir.join(format!("rf{i}"))
    }

    /// Starts node `i`'s VM (detached; its output in `rf<i>/server.log`).
    pub(crate) fn boot(&mut self, i: u8) -> anyhow::Result<()> {
        let d = self.node_dir(i);
        std::fs::create_dir_all(&d)?;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(d.join("server.log"))?;
        let child = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"))
            .envs(self.env(i))
            // A crashing node writes its MnesiaCore dump into its working directory.
            .current_dir(&d)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting rabbitmq-server")?;
        self.children.push(child);
        if !self.started.contains(&i) {
            self.started.push(i);
        }
        Ok(())
    }

    fn env(&self, i: u8) -> Vec<(String, String)> {
        let d = self.node_dir(i);
        let p = |x: &str| d.join(x).display().to_string();
        vec![
            ("HOME".into(), self.dir.display().to_string()),
            ("RABBITMQ_NODENAME".into(), node(i)),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), (5680 + u16::from(i)).to_string()),
            ("RABBITMQ_DIST_PORT".into(), (25680 + u16::from(i)).to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), p("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), p("log")),
            ("RABBITMQ_PID_FILE".into(), p("pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), self.dir.join("enabled_plugins").display().to_string()),
            ("RABBITMQ_CONFIG_FILE".into(), p("none")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE".into(), p("none-advanced.config")),
        ]
    }

    /// `rabbitmqctl -n rf<i>@localhost args...` with the cluster's cookie.
    pub(crate) fn ctl(&self, i: u8, args: &[&str]) -> anyhow::Result<Output> {
        self.tool("rabbitmqctl", i, args)
    }

    pub(crate) fn tool(&self, tool: &str, i: u8, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(format!("{RABBITMQ_BIN}/{tool}"))
            .env("HOME", &self.dir)
            .args(["-n", &node(i)])
            .args(args)
            .output()?)
    }

    fn ctl_ok(&self, i: u8, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.ctl(i, args)?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {} failed: {}{}",
                node(i),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    pub(crate) async fn await_startup(&self, i: u8, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ctl(i, &["await_startup", "--timeout", "5"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} did not start (see {}/server.log)", node(i), self.node_dir(i).display());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The OS pid of node `i`'s VM, as the node itself says.
    fn pid(&self, i: u8) -> Option<u32> {
        let out = self.ctl(i, &["eval", "os:getpid()."]).ok()?;
        String::from_utf8_lossy(&out.stdout).trim().trim_matches('"').parse().ok()
    }

    /// kill -9 of node `i`'s VM.
    pub(crate) fn kill9(&self, i: u8) -> anyhow::Result<u32> {
        let pid = self.pid(i).with_context(|| format!("no running VM for {}", node(i)))?;
        let ok = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?.success();
        if !ok {
            bail!("kill -9 {pid} ({}) failed", node(i));
        }
        Ok(pid)
    }

    /// Name, leader node, member count and ready messages of every queue whose name starts with `prefix`, asked of node `i`.
    pub(crate) fn queues(&self, i: u8, prefix: &str) -> anyhow::Result<Vec<(String, String, usize, u64)>> {
        let out = self.ctl_ok(i, &["list_queues", "name", "leader", "members", "messages", "--formatter", "json"])?;
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("list_queues json")?;
        Ok(v.iter()
            .filter_map(|q| {
                let name = q["name"].as_str()?.to_string();
                name.starts_with(prefix).then(|| {
                    (
                        name,
                        q["leader"].as_str().unwrap_or("").to_string(),
                        q["members"].as_array().map_or(0, Vec::len),
                        q["messages"].as_u64().unwrap_or(0),
                    )
                })
            })
            .collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for &i in &self.started {
            let _ = self.ctl(i, &["stop"]);
        }
        // Whatever did not stop cleanly is killed through our own process handle, never by name.
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
