//! [`Browser`]: headless Chromium (Debian's `chromium`) driven over WebDriver
//! by its `chromedriver` (Debian's `chromium-driver`), for the tests that use
//! the console as a person would. `scripts/test` installs both.
//!
//! Every browser has a `chromedriver` of its own on a free port, in a process
//! group of its own with the Chromium it starts, and a profile (and every
//! temporary file of theirs) in a temporary folder: dropping the [`Browser`] (at the end of a test or while
//! a failed assertion unwinds) kills the whole group and removes the folder,
//! so no process outlives the test.

use anyhow::{bail, Context};
use serde_json::Value;
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use thirtyfour::{prelude::*, ChromiumLikeCapabilities};

/// How long [`Browser::find`] and friends wait unless told otherwise.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where [`Browser::screenshot`] writes: `bench/results/console/` of the repository.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/console")
}

/// `chromedriver` and the Chromium processes it started: one process group,
/// killed when dropped.
struct DriverProcess {
    child: Child,
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium in a session of its own.
pub struct Browser {
    // Dropped in this order: the session (ended on `close`, leaked on a
    // panic), then chromedriver and its Chromium, then the profile.
    driver: Option<WebDriver>,
    process: DriverProcess,
    profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("chromedriver", &self.process.child.id()).finish_non_exhaustive()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Not closed (a failed assertion): the process group is killed next,
        // so there is no session to end politely.
        if let Some(driver) = self.driver.take() {
            let _ = driver.leak();
        }
    }
}

/// The program `var` names, else `name` on the PATH.
fn program(var: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on the PATH: run scripts/test (it installs Debian's chromium and chromium-driver), or set {var}")
        })
}

impl Browser {
    /// Starts `chromedriver` (`$CHROMEDRIVER`, else on the PATH) on a free
    /// port, waits until it answers, and opens headless Chromium
    /// (`$CHROMIUM`, else `chromium` on the PATH) in a 1280x900 window, with
    /// media allowed to play without a gesture.
    pub async fn start() -> anyhow::Result<Self> {
        let chromium = program("CHROMIUM", "chromium")?;
        let chromedriver = program("CHROMEDRIVER", "chromedriver")?;
        let profile = tempfile::Builder::new().prefix("reelfleet-browser-").tempdir()?;
        let log = profile.path().join("chromedriver.log");
        let port = crate::fleet::free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            // Chromium's singleton socket and chromedriver's scratch folders too, removed with the profile.
            .env("TMPDIR", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!("{} does not start: run scripts/test, or set CHROMEDRIVER", chromedriver.display())
            })?;
        let mut browser = Browser { driver: None, process: DriverProcess { child }, profile };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match reqwest::get(format!("{url}/status")).await {
                Ok(r) => r.json::<Value>().await.ok().is_some_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.process.child.try_wait() {
                bail!("chromedriver exited ({status}) before answering: {}", browser.log_tail());
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {url}: {}", browser.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(&chromium.to_string_lossy())?;
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--autoplay-policy=no-user-gesture-required",
            "--mute-audio",
            "--no-first-run",
            "--no-default-browser-check",
        ] {
            caps.add_arg(arg)?;
        }
        caps.add_arg(&format!("--user-data-dir={}", browser.profile.path().join("profile").display()))?;
        let driver = WebDriver::builder(&url, caps)
            .request_timeout(Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("Chromium does not start under chromedriver: {e}: {}", browser.log_tail()))?;
        browser.driver = Some(driver);
        Ok(browser)
    }

    /// The last lines chromedriver logged, for an error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Its profile folder (removed with the browser); every Chromium
    /// process it starts names it on its command line.
    pub fn profile(&self) -> &Path {
        self.profile.path()
    }

    /// The WebDriver session, for what the helpers here do not cover.
    pub fn driver(&self) -> &WebDriver {
        // The session is set in `start` and taken only by `close` and `drop`, which consume the browser.
        self.driver.as_ref().expect("a started browser has a session")
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.driver().goto(url).await.with_context(|| format!("open {url}"))
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    pub async fn find(&self, css: &str) -> anyhow::Result<WebElement> {
        self.find_within(css, WAIT).await
    }

    /// The first element matching `css`, waiting up to `timeout` for it.
    pub async fn find_within(&self, css: &str, timeout: Duration) -> anyhow::Result<WebElement> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.driver().find_all(By::Css(css)).await?.into_iter().next() {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!("no element matches {css:?} after {timeout:?} on {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body: `return ...` gives its value) and
    /// returns its value as JSON.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let ret = self.driver().execute(script, Vec::new()).await.with_context(|| format!("script {script:?}"))?;
        Ok(ret.json().clone())
    }

    /// Waits up to `timeout` until the JavaScript expression `condition` is
    /// truthy; fails saying which condition did not hold and where.
    pub async fn wait_until(&self, condition: &str, timeout: Duration) -> anyhow::Result<()> {
        let script = format!("return Boolean({condition});");
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&script).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{condition} still false after {timeout:?} on {}", self.url().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the field matching `css`, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let field = self.find(css).await?;
        field.clear().await?;
        field.send_keys(text).await.with_context(|| format!("type into {css:?}"))
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.find(css).await?.click().await.with_context(|| format!("click {css:?}"))
    }

    /// The page's URL (empty when it cannot be read).
    pub async fn url(&self) -> String {
        self.driver().current_url().await.map(|u| u.to_string()).unwrap_or_default()
    }

    /// Saves what the window shows as `bench/results/console/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        let png = self.driver().screenshot_as_png().await.context("screenshot")?;
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Ends the session (Chromium closes), then stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(driver) = self.driver.take() {
            driver.quit().await.context("end the WebDriver session")?;
        }
        Ok(())
    }
}
