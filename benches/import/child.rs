//! Running the program as a child process and measuring it.
//!
//! CPU time and peak RSS come from `getrusage(RUSAGE_CHILDREN)`, which covers every child
//! a process has waited for. So that each run is measured alone, the bench starts itself
//! again as a thin wrapper (`--measure-child`) whose only child is the program; the wrapper
//! waits for it and prints the figures on one line.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};

/// The flag that turns the bench binary into the measuring wrapper.
pub const MEASURE_FLAG: &str = "--measure-child";

/// What one run of the program cost.
#[derive(Debug, Clone, Copy)]
pub struct ChildFigures {
    /// From spawn to exit.
    pub wall: Duration,
    /// User plus system CPU time of the program.
    pub cpu: Duration,
    /// Peak resident set size of the program, in bytes.
    pub peak_rss: u64,
    /// The exit code; -1 when killed by a signal.
    pub exit_code: i32,
}

/// The wrapper's side: runs `args` (program first), waits, prints the figures.
pub fn wrapper_main(args: &[String]) -> anyhow::Result<()> {
    let (program, rest) = args.split_first().context("no program to measure")?;
    let started = Instant::now();
    let status = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    let wall = started.elapsed();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
    println!(
        "{} {} {} {}",
        wall.as_micros(),
        micros(usage.user_time()) + micros(usage.system_time()),
        usage.max_rss(), // kilobytes on Linux
        status.code().unwrap_or(-1)
    );
    Ok(())
}

/// Runs the program with exactly `env` (nothing inherited), its log written to `log`.
pub fn run_measured(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<ChildFigures> {
    let log_file = std::fs::File::create(log)?;
    let output = Command::new(std::env::current_exe()?)
        .arg(MEASURE_FLAG)
        .arg(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(log_file)
        .output()
        .context("cannot start the measuring wrapper")?;
    let line = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<i64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the wrapper printed {line:?}"))?;
    let [wall_us, cpu_us, rss_kb, exit_code] = fields[..] else {
        bail!("the wrapper printed {line:?}; see {}", log.display());
    };
    Ok(ChildFigures {
        wall: Duration::from_micros(wall_us as u64),
        cpu: Duration::from_micros(cpu_us as u64),
        peak_rss: rss_kb as u64 * 1024,
        exit_code: exit_code as i32,
    })
}

/// A fresh, empty directory for one run's STATE_DIR and temporary files.
pub fn fresh_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `serve` and measures process start to the first HTTP answer on `/`.
pub fn time_to_ready(program: &Path, env: &[(String, String)]) -> anyhow::Result<Duration> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let started = Instant::now();
    let mut child = Command::new(program)
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    let ready = loop {
        if let Some(status) = child.try_wait()? {
            bail!("serve exited before it was ready ({status})");
        }
        if answers_root(port) {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(10) {
            break Duration::MAX;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    child.kill()?;
    child.wait()?;
    if ready == Duration::MAX {
        bail!("serve did not answer on / within 10 s");
    }
    Ok(ready)
}

/// Whether something answers `GET /` on the port with an HTTP status line.
fn answers_root(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_ok()
        && stream.write_all(request).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 ")
}
