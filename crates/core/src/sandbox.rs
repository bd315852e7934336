//! Where ffmpeg and ffprobe run: the command line that wraps every media
//! process in the decoder sandbox (bubblewrap) and under resource limits
//! (util-linux `prlimit`), and the check a worker makes once at start that
//! both work here. The workspace forbids `unsafe`, so there is no
//! `pre_exec`/`setrlimit` from Rust: the wrappers are binaries.
//!
//! Under `media.sandbox = "bubblewrap"` a call runs as
//! `bwrap <view> -- prlimit <limits> -- ffmpeg <args>`, where the view is:
//! every namespace bwrap can unshare (network: only a loopback of its own;
//! pid: the worker and every other process are invisible; ipc, uts, cgroup,
//! and user where the kernel allows), `--die-with-parent`, `--new-session`
//! (no terminal to inject into), every capability dropped, an environment of
//! `PATH` alone, a root that is an empty read-only tmpfs holding only `/usr`
//! (and the `/bin`, `/lib*` links into it), the dynamic loader's cache,
//! `/etc/alternatives` and the CPU and NUMA topology of `/sys` read-only, a
//! fresh `/proc`, a minimal `/dev`, an empty `/tmp`, and the folders of the
//! files the call names: read-only for its inputs, writable only for its
//! outputs (the message's scratch folder).
//! Nothing else of the machine (other jobs' scratch folders, the worker's
//! configuration, `/home`, `/root`, `/etc`) exists inside.

use crate::{
    media::MediaError,
    settings::{LimitsKind, MediaSettings, SandboxKind},
};
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
};

/// Resource limits of one media process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_AS`, bytes.
    pub address_space_bytes: u64,
    /// `RLIMIT_CPU` soft limit in seconds when fixed; `None`: each call's
    /// timeout times [`Runner::cpus`].
    pub cpu_secs: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    pub file_size_bytes: u64,
    /// `RLIMIT_NPROC`.
    pub processes: u64,
}

impl Limits {
    /// The limits `settings` ask for on a machine where the worker may use `cpus` CPUs.
    pub fn from_settings(settings: &MediaSettings, cpus: u64) -> Self {
        const MIB: u64 = 1024 * 1024;
        let address_space_mb = match settings.limit_address_space_mb {
            0 => 4096 + 128 * cpus,
            mb => mb,
        };
        Self {
            address_space_bytes: address_space_mb.saturating_mul(MIB),
            cpu_secs: (settings.limit_cpu_secs > 0).then_some(settings.limit_cpu_secs),
            file_size_bytes: settings.limit_file_size_mb.saturating_mul(MIB),
            processes: settings.limit_processes,
        }
    }

    /// The CPU seconds (soft, hard) of a call allowed `timeout_secs` on `cpus` CPUs:
    /// the kernel sends SIGXCPU at the soft limit (ffmpeg then stops), SIGKILL at the hard one.
    pub fn cpu(&self, timeout_secs: u64, cpus: u64) -> (u64, u64) {
        let soft = self.cpu_secs.unwrap_or_else(|| timeout_secs.saturating_mul(cpus.max(1)).saturating_add(10));
        (soft, soft.saturating_add((soft / 10).max(10)))
    }
}

/// The folders a call may see: inputs read-only, outputs writable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Files {
    /// Folders of files the call reads.
    pub read: Vec<PathBuf>,
    /// Folders of files the call writes.
    pub write: Vec<PathBuf>,
}

impl Files {
    /// The folders of the `file:` paths of an ffmpeg/ffprobe argument list:
    /// the one after `-i` is read; any other is written when `writes` (ffmpeg),
    /// read otherwise (ffprobe's input is its last argument).
    pub fn from_args(args: &[String], writes: bool) -> Self {
        let mut files = Files::default();
        let mut previous: Option<&str> = None;
        for arg in args {
            if let Some(path) = arg.strip_prefix("file:") {
                let dir = absolute(Path::new(path)).parent().map(Path::to_path_buf).unwrap_or_else(|| "/".into());
                if writes && previous != Some("-i") {
                    files.write.push(dir);
                } else {
                    files.read.push(dir);
                }
            }
            previous = Some(arg.as_str());
        }
        files.write.sort();
        files.write.dedup();
        files.read.sort();
        files.read.dedup();
        let write = files.write.clone();
        files.read.retain(|d| !write.contains(d));
        files
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `PATH` for the tools: the worker's own, or the usual system folders.
pub fn tool_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}

/// The binary `name` names: itself when it has a `/`, else the first match on `path`.
pub fn find_binary(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    if name.contains('/') {
        let p = absolute(Path::new(name));
        return p.is_file().then_some(p);
    }
    std::env::split_paths(path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// CPUs this process may run on (its affinity mask: what ffmpeg sizes its
/// threads by), else what the standard library reports.
pub fn cpu_count() -> u64 {
    let from_mask = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        let list = s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim().to_string();
        let mut n = 0u64;
        for part in list.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            n += b.trim().parse::<u64>().ok()?.checked_sub(a.trim().parse::<u64>().ok()?)? + 1;
        }
        (n > 0).then_some(n)
    });
    from_mask.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1))
}

/// Makes this process undumpable (`PR_SET_DUMPABLE` 0): its
/// `/proc/<pid>/environ`, `mem` and `maps` belong to root and it cannot be
/// ptraced, so a decoder running as the same user (without the sandbox, as
/// in a container) cannot read the worker's credentials from there. Children
/// are dumpable again after their `exec`. No core dumps of the worker either.
pub fn shield_worker() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Wraps media processes in the sandbox and under the limits the settings ask for.
#[derive(Clone, Debug)]
pub struct Runner {
    sandbox: SandboxKind,
    bwrap: Option<PathBuf>,
    prlimit: Option<PathBuf>,
    limits: Option<Limits>,
    cpus: u64,
    path: OsString,
}

impl Runner {
    /// No sandbox and no limits (tests, and tools that read no input).
    pub fn bare() -> Self {
        Self {
            sandbox: SandboxKind::None,
            bwrap: None,
            prlimit: None,
            limits: None,
            cpus: cpu_count(),
            path: tool_path(),
        }
    }

    /// The runner `settings` ask for, checked once: `prlimit` and `bwrap`
    /// must be found, and a trivial command must run through them. Fails
    /// (the worker must not start) naming the setting and how to opt out.
    pub fn new(settings: &MediaSettings) -> Result<Self, MediaError> {
        Self::with_path(settings, tool_path())
    }

    /// [`Runner::new`], finding the wrappers and tools on `path`.
    pub fn with_path(settings: &MediaSettings, path: OsString) -> Result<Self, MediaError> {
        let cpus = cpu_count();
        let mut runner = Self { sandbox: settings.sandbox, bwrap: None, prlimit: None, limits: None, cpus, path };
        if settings.limits == LimitsKind::Prlimit {
            runner.prlimit = Some(find_binary("prlimit", &runner.path).ok_or_else(|| {
                MediaError::Sandbox {
                    setting: "media.limits = \"prlimit\"",
                    reason: "prlimit is not on PATH (Debian and Ubuntu have it in util-linux); install it, or set \
                         media.limits = \"none\" (REELFLEET_MEDIA__LIMITS=none) to run ffmpeg without resource limits"
                        .into(),
                }
            })?);
            runner.limits = Some(Limits::from_settings(settings, cpus));
        }
        if settings.sandbox == SandboxKind::Bubblewrap {
            runner.bwrap = Some(find_binary("bwrap", &runner.path).ok_or_else(|| MediaError::Sandbox {
                setting: "media.sandbox = \"bubblewrap\"",
                reason: format!("bwrap is not on PATH; install bubblewrap (apt-get install bubblewrap), or {OPT_OUT}"),
            })?);
        }
        runner.probe(settings)?;
        Ok(runner)
    }

    /// The sandbox in force.
    pub fn sandbox(&self) -> SandboxKind {
        self.sandbox
    }

    /// The limits in force, if any.
    pub fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// CPUs the worker may use.
    pub fn cpus(&self) -> u64 {
        self.cpus
    }

    /// The signal that ended a sandboxed process, from bwrap's exit `code`
    /// (128 + the signal, as a shell reports it); `None` without the sandbox.
    pub fn signal_of(&self, code: Option<i32>) -> Option<i32> {
        code.filter(|c| self.bwrap.is_some() && (129..=128 + 64).contains(c)).map(|c| c - 128)
    }

    /// One line for the worker's start-up log.
    pub fn describe(&self) -> String {
        let sandbox = match &self.bwrap {
            Some(b) => format!("bubblewrap ({})", b.display()),
            None => "none".into(),
        };
        let limits = match self.limits {
            Some(l) => format!(
                "prlimit: address space {} MiB, CPU {}, file size {} MiB, {} processes",
                l.address_space_bytes >> 20,
                l.cpu_secs.map(|s| format!("{s} s")).unwrap_or_else(|| format!("timeout x {} CPUs", self.cpus)),
                l.file_size_bytes >> 20,
                l.processes
            ),
            None => "none".into(),
        };
        format!("decoder sandbox: {sandbox}; resource limits: {limits}")
    }

    /// Runs `true` through the wrappers, separately, so that a failure names
    /// the setting that caused it.
    fn probe(&self, settings: &MediaSettings) -> Result<(), MediaError> {
        let scratch = tempfile::Builder::new().prefix("reelfleet-probe-").tempdir()?;
        let files = Files { read: Vec::new(), write: vec![scratch.path().to_path_buf()] };
        let run = |runner: &Runner| -> Result<(), String> {
            let mut cmd = runner.std_command("true", &[], &files, settings.probe_timeout_secs);
            let out = cmd.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{}: {}", out.status, crate::media::tail(&String::from_utf8_lossy(&out.stderr), 600)))
            }
        };
        if self.bwrap.is_some() {
            let sandbox_only = Runner { prlimit: None, limits: None, ..self.clone() };
            run(&sandbox_only).map_err(|e| MediaError::Sandbox {
                setting: "media.sandbox = \"bubblewrap\"",
                reason: format!(
                    "bwrap cannot make its sandbox here ({e}); it needs user namespaces (or root), which \
                     Docker's and Kubernetes' default seccomp profiles refuse inside a container; allow \
                     them, or {OPT_OUT}"
                ),
            })?;
        }
        if self.prlimit.is_some() {
            run(self).map_err(|e| MediaError::Sandbox {
                setting: "media.limits = \"prlimit\"",
                reason: format!(
                    "a trivial command does not run under the limits ({e}); raise media.limit_* or set \
                     media.limits = \"none\" (REELFLEET_MEDIA__LIMITS=none)"
                ),
            })?;
        }
        Ok(())
    }

    /// The program and arguments that run `program args` in the sandbox and
    /// under the limits, for a call allowed `timeout_secs`.
    pub fn wrap(&self, program: &str, args: &[String], files: &Files, timeout_secs: u64) -> (OsString, Vec<OsString>) {
        let resolved = find_binary(program, &self.path).unwrap_or_else(|| PathBuf::from(program));
        let mut inner: Vec<OsString> = Vec::new();
        if let (Some(prlimit), Some(l)) = (&self.prlimit, &self.limits) {
            let (soft, hard) = l.cpu(timeout_secs, self.cpus);
            inner.push(prlimit.into());
            inner.extend(
                [
                    format!("--as={}", l.address_space_bytes),
                    format!("--cpu={soft}:{hard}"),
                    format!("--fsize={}", l.file_size_bytes),
                    format!("--nproc={}", l.processes),
                    "--".into(),
                ]
                .map(OsString::from),
            );
        }
        inner.push(resolved.clone().into());
        inner.extend(args.iter().map(OsString::from));
        let Some(bwrap) = &self.bwrap else {
            let program = inner.remove(0);
            return (program, inner);
        };
        let mut binaries = vec![resolved];
        binaries.extend(self.prlimit.clone());
        let mut out = bwrap_args(&self.path, &binaries, files);
        out.push("--".into());
        out.extend(inner);
        (bwrap.into(), out)
    }

    /// [`Runner::wrap`] as a ready [`std::process::Command`], with the environment cleared but `PATH`.
    pub fn std_command(
        &self,
        program: &str,
        args: &[String],
        files: &Files,
        timeout_secs: u64,
    ) -> std::process::Command {
        let (program, args) = self.wrap(program, args, files, timeout_secs);
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env_clear().env("PATH", &self.path);
        cmd
    }

    /// [`Runner::wrap`] as a ready [`tokio::process::Command`], with the
    /// environment cleared but `PATH`, killed when dropped.
    pub fn command(&self, program: &str, args: &[String], files: &Files, timeout_secs: u64) -> tokio::process::Command {
        let (program, args) = self.wrap(program, args, files, timeout_secs);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env_clear().env("PATH", &self.path).kill_on_drop(true);
        cmd
    }
}

const OPT_OUT: &str =
    "set media.sandbox = \"none\" (REELFLEET_MEDIA__SANDBOX=none) to run decoders without the sandbox";

/// Folders of the system that tools need: `/usr`, and the top-level links
/// into it (merged /usr) or the folders themselves (split /usr).
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Files of `/etc` the dynamic loader reads (`/etc/alternatives`: Debian's
/// BLAS/LAPACK, which ffmpeg links, are found through it).
const ETC_FILES: &[&str] = &["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives"];
/// The CPU and NUMA topology, read-only: without them x265 finds no CPU
/// (libnuma reads `/sys/devices/system/node`) and encodes on one thread.
const SYS_DIRS: &[&str] = &["/sys/devices/system/cpu", "/sys/devices/system/node"];

fn bwrap_args(path: &OsString, binaries: &[PathBuf], files: &Files) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| a.extend(items.iter().map(|i| i.as_ref().to_os_string()));
    push(&[&"--unshare-all", &"--die-with-parent", &"--new-session", &"--cap-drop", &"ALL"]);
    push(&[&"--clearenv", &"--setenv", &"PATH", path]);
    push(&[&"--ro-bind", &"/usr", &"/usr"]);
    for dir in SYSTEM_DIRS {
        match std::fs::read_link(dir) {
            Ok(target) => push(&[&"--symlink", &target, dir]),
            Err(_) if Path::new(dir).is_dir() => push(&[&"--ro-bind", dir, dir]),
            Err(_) => {}
        }
    }
    for f in ETC_FILES.iter().chain(SYS_DIRS) {
        push(&[&"--ro-bind-try", f, f]);
    }
    push(&[&"--proc", &"/proc", &"--dev", &"/dev", &"--tmpfs", &"/tmp"]);
    // Binaries outside /usr (a static ffmpeg in /opt, a test's fake tool): their folder, read-only.
    let mut extra: Vec<PathBuf> = Vec::new();
    for b in binaries {
        for p in [b.clone(), std::fs::canonicalize(b).unwrap_or_else(|_| b.clone())] {
            if let Some(dir) = p.parent().filter(|d| !d.starts_with("/usr")) {
                if !extra.iter().any(|e| e == dir) {
                    extra.push(dir.to_path_buf());
                }
            }
        }
    }
    // Parents before children, so a nested bind is not hidden by its parent's.
    let mut binds: Vec<(&str, &PathBuf)> = extra.iter().map(|d| ("--ro-bind", d)).collect();
    binds.extend(files.read.iter().map(|d| ("--ro-bind", d)));
    binds.extend(files.write.iter().map(|d| ("--bind", d)));
    binds.sort_by_key(|(_, d)| d.components().count());
    for (how, dir) in binds {
        push(&[&how, dir, dir]);
    }
    let cwd = files.write.first().or(files.read.first()).cloned().unwrap_or_else(|| "/".into());
    push(&[&"--chdir", &cwd, &"--remount-ro", &"/"]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn inputs_are_read_and_outputs_written() {
        let args = s(&["-i", "file:/s/a/source", "-i", "file:/s/b/ref.mp4", "-c:v", "libx264", "file:/s/a/out.mp4"]);
        let f = Files::from_args(&args, true);
        assert_eq!(f.write, vec![PathBuf::from("/s/a")]);
        assert_eq!(f.read, vec![PathBuf::from("/s/b")], "a folder written to is not bound twice");
        let probe = Files::from_args(&s(&["-v", "error", "file:/s/a/source"]), false);
        assert_eq!((probe.read, probe.write), (vec![PathBuf::from("/s/a")], vec![]));
        assert_eq!(Files::from_args(&s(&["-i", "file:/x/y", "-f", "null", "-"]), true).write, Vec::<PathBuf>::new());
    }

    #[test]
    fn limits_come_from_settings_or_the_machine() {
        let mut m = MediaSettings::default();
        let l = Limits::from_settings(&m, 2);
        assert_eq!(l.address_space_bytes, (4096 + 256) << 20);
        assert_eq!(l.cpu(100, 2), (210, 231), "derived: the timeout on every CPU, then a grace to SIGKILL");
        m.limit_cpu_secs = 50;
        m.limit_address_space_mb = 1000;
        let l = Limits::from_settings(&m, 2);
        assert_eq!((l.address_space_bytes, l.cpu(100, 2)), (1000 << 20, (50, 60)));
    }

    #[test]
    fn the_command_line_puts_the_limits_inside_the_sandbox() {
        let r = Runner {
            sandbox: SandboxKind::Bubblewrap,
            bwrap: Some("/usr/bin/bwrap".into()),
            prlimit: Some("/usr/bin/prlimit".into()),
            limits: Some(Limits { address_space_bytes: 1, cpu_secs: Some(5), file_size_bytes: 2, processes: 3 }),
            cpus: 2,
            path: "/usr/bin:/bin".into(),
        };
        let files = Files { read: vec!["/in".into()], write: vec!["/scratch/job".into()] };
        let (program, args) = r.wrap("/usr/bin/ffmpeg", &s(&["-i", "x"]), &files, 60);
        assert_eq!(program, "/usr/bin/bwrap");
        let line: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let line = line.join(" ");
        for part in [
            "--unshare-all --die-with-parent --new-session --cap-drop ALL --clearenv --setenv PATH /usr/bin:/bin",
            "--proc /proc --dev /dev --tmpfs /tmp",
            "--ro-bind /in /in",
            "--bind /scratch/job /scratch/job",
            "--chdir /scratch/job --remount-ro /",
            "-- /usr/bin/prlimit --as=1 --cpu=5:15 --fsize=2 --nproc=3 -- /usr/bin/ffmpeg -i x",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        assert!(!line.contains("--bind / ") && !line.contains("--ro-bind / "), "the machine's root is not bound");
        assert_eq!((r.signal_of(Some(153)), r.signal_of(Some(137)), r.signal_of(Some(255))), (Some(25), Some(9), None));
        let bare = Runner { bwrap: None, prlimit: None, limits: None, ..r };
        assert_eq!(bare.signal_of(Some(153)), None, "without bwrap an exit code is only an exit code");
        let (program, args) = bare.wrap("/usr/bin/ffmpeg", &s(&["-i", "x"]), &files, 60);
        assert_eq!((program, args), ("/usr/bin/ffmpeg".into(), vec!["-i".into(), "x".into()]));
    }

    #[cfg(unix)]
    #[test]
    fn a_worker_that_cannot_sandbox_or_limit_refuses_to_start_and_says_how_to_opt_out() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let path = || OsString::from(format!("{}:/usr/bin:/bin", dir.path().display()));
        let mut settings = MediaSettings::default();
        let missing_bwrap = || {
            let empty = tempfile::tempdir().unwrap();
            let only = OsString::from(format!("{}:/nonexistent", empty.path().display()));
            Runner::with_path(&MediaSettings { limits: LimitsKind::None, ..MediaSettings::default() }, only)
        };
        let err = missing_bwrap().expect_err("no bwrap").to_string();
        assert!(err.contains("media.sandbox") && err.contains("REELFLEET_MEDIA__SANDBOX=none"), "{err}");

        tool("bwrap", "echo 'bwrap: Creating new namespace failed: Operation not permitted' >&2; exit 1");
        let err = Runner::with_path(&settings, path()).expect_err("bwrap fails").to_string();
        assert!(err.contains("Operation not permitted") && err.contains("media.sandbox = \"none\""), "{err}");

        settings.sandbox = SandboxKind::None;
        tool("prlimit", "echo 'prlimit: failed to set the AS resource limit' >&2; exit 1");
        let err = Runner::with_path(&settings, path()).expect_err("prlimit fails").to_string();
        assert!(err.contains("media.limits") && err.contains("REELFLEET_MEDIA__LIMITS=none"), "{err}");

        settings.limits = LimitsKind::None;
        let runner = Runner::with_path(&settings, path()).expect("both turned off explicitly");
        assert_eq!((runner.sandbox(), runner.limits()), (SandboxKind::None, None));
        assert!(Runner::new(&MediaSettings::default()).is_ok(), "bwrap and prlimit work on this machine");
    }

    #[tokio::test]
    async fn encoders_see_the_same_cpus_inside_the_sandbox() {
        let args: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:duration=0.2",
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=info",
            "-f",
            "null",
            "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let pool = |out: std::process::Output| {
            let text = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{text}");
            text.lines().find(|l| l.contains("frame threads / pool features")).map(str::to_string)
        };
        let sandboxed = Runner::new(&MediaSettings::default()).expect("bwrap and prlimit work here");
        let inside = pool(sandboxed.command("ffmpeg", &args, &Files::default(), 30).output().await.unwrap());
        let bare = pool(Runner::bare().command("ffmpeg", &args, &Files::default(), 30).output().await.unwrap());
        assert_eq!(inside, bare, "x265 threads differently inside the sandbox");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_shielded_worker_is_not_dumpable() {
        shield_worker().expect("prctl");
        let now = rustix::process::dumpable_behavior().expect("prctl");
        assert_eq!(now, rustix::process::DumpableBehavior::NotDumpable);
    }

    #[test]
    fn the_cpu_count_is_positive() {
        assert!(cpu_count() >= 1);
    }
}
