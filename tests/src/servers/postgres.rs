//! A throwaway PostgreSQL server: `initdb` in a temporary directory, `postgres` listening on a
//! free 127.0.0.1 port with trust authentication, stopped and deleted when dropped.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI containers) the
//! cluster is made and run as `nobody`, which then owns the temporary directory.
//!
//! The server process gets a parent-death signal from the thread that waits on it, so even a
//! test process killed with SIGKILL leaves no server behind. Missing binaries fail the test
//! with an install hint: a silent skip would let a broken PostgreSQL store pass CI.
//!
//! ```no_run
//! let pg = imagine_tests::servers::postgres::Postgres::start();
//! let url = pg.create_database(); // postgres://postgres@127.0.0.1:PORT/test_1
//! # let _ = url;
//! ```

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the server binaries are looked for when `initdb` is not on the PATH.
const DEBIAN_BIN_DIRS: &str = "/usr/lib/postgresql";
/// Set to a folder holding `initdb` and `postgres` to use those.
const BIN_ENV: &str = "IMAGINE_TEST_PG_BIN";
const INSTALL_HINT: &str = "PostgreSQL's server programs (initdb, postgres, pg_isready, createdb) \
    were not found. Install them (Debian/Ubuntu: `apt-get install -y postgresql`; macOS: \
    `brew install postgresql@15`) or set IMAGINE_TEST_PG_BIN to the folder holding them. The \
    PostgreSQL tests never skip.";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server owned by the test. Dropping it stops the server (fast
/// shutdown) and deletes its data.
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    pid: u32,
    /// The thread that owns the server process and returns its exit status.
    waiter: Option<JoinHandle<std::io::Result<ExitStatus>>>,
    /// Kept last so the directory outlives the server.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Makes a cluster in a new temporary directory and starts it on a free port. Panics,
    /// saying what to install, if the binaries are missing; panics with the server's log if it
    /// does not start.
    pub fn start() -> Postgres {
        let bin = find_bin_dir().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let dir = tempfile::Builder::new()
            .prefix("imagine-pg-")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        let user = server_user();
        if let Some((uid, gid)) = user {
            chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the temporary directory to nobody");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg("--no-sync")
            .current_dir(dir.path());
        run_as(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A port the OS just handed out and released; a clash is retried.
        let log = dir.path().join("postgres.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let (pid, waiter) = spawn_server(&bin, dir.path(), &data, port, user)
                .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
            match wait_ready(&bin, port, &waiter, &log) {
                Ok(()) => {
                    return Postgres {
                        port,
                        bin,
                        pid,
                        waiter: Some(waiter),
                        dir,
                    }
                }
                Err(e) => {
                    signal_stop(pid);
                    let _ = waiter.join();
                    if attempt < 5 && e.contains("already in use") {
                        continue;
                    }
                    panic!("PostgreSQL did not start: {e}");
                }
            }
        }
    }

    /// One server for the whole test process, started on first use and stopped when the
    /// process exits (or dies: see the module notes). Tests isolate themselves with
    /// [`Postgres::create_database`].
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            let pg = Postgres::start();
            // Statics are never dropped: stop it when the process exits normally.
            extern "C" fn stop_shared() {
                if let Some(pg) = SHARED.get() {
                    pg.signal_stop();
                    // Its waiting thread still runs during exit and reaps it.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while pg.waiter.as_ref().is_some_and(|w| !w.is_finished())
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = std::fs::remove_dir_all(pg.dir.path());
                }
            }
            // SAFETY: registers a plain function with no arguments; it only signals a
            // process and deletes a folder.
            unsafe { libc::atexit(stop_shared) };
            pg
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server (user `postgres`, no password).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new, empty database with a name unique in this process, and returns its URL.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn signal_stop(&self) {
        signal_stop(self.pid);
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.signal_stop();
            let _ = waiter.join();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `pg_isready` until the server accepts connections, or says why it never will.
fn wait_ready(
    bin: &Path,
    port: u16,
    waiter: &JoinHandle<std::io::Result<ExitStatus>>,
    log: &Path,
) -> Result<(), String> {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if waiter.is_finished() {
            return Err(format!("the server exited. Its log:\n{}", read_log()));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run pg_isready: {e}. {INSTALL_HINT}"))?;
        if ready.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not ready after {START_TIMEOUT:?}. Its log:\n{}",
                read_log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGINT: PostgreSQL's fast shutdown (clients are disconnected, no waiting for them).
fn signal_stop(pid: u32) {
    // SAFETY: kill(2) on the pid of a server these tests started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
}

/// Starts `postgres` on a thread that owns it and waits for it, so the server's parent-death
/// signal fires exactly when that thread (and so the test process) is gone.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    user: Option<(u32, u32)>,
) -> Result<(u32, JoinHandle<std::io::Result<ExitStatus>>), String> {
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        chown(dir.join("postgres.log"), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A test cluster: durability is not wanted, speed is.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .args(["-c", "shared_buffers=32MB"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    run_as(&mut cmd, user);
    // SAFETY: prctl(2) is async-signal-safe; runs in the child between fork and exec (after
    // the change of user, which would clear it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                child.wait()
            }
            Err(e) => {
                let _ = tx.send(Err(format!("{e}. {INSTALL_HINT}")));
                Err(e)
            }
        })
        .map_err(|e| e.to_string())?;
    let pid = rx.recv().map_err(|e| e.to_string())??;
    Ok((pid, waiter))
}

/// Runs `cmd` as `user` (uid, gid) when one is given.
fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

/// `nobody` (uid, gid) when running as root, since PostgreSQL refuses root; else `None`.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let mut passwd = String::new();
    if let Ok(mut f) = std::fs::File::open("/etc/passwd") {
        let _ = f.read_to_string(&mut passwd);
    }
    let nobody = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == "nobody")
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    });
    Some(nobody.unwrap_or((65534, 65534)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port on 127.0.0.1")
}

/// `IMAGINE_TEST_PG_BIN`, else the folder `initdb` on the PATH really lives in (Debian links
/// it from the versioned folder that also holds `pg_isready` and `createdb`), else the newest
/// `/usr/lib/postgresql/N/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pg_isready", "createdb"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return complete(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("initdb"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
    });
    if let Some(dir) = on_path.filter(|d| complete(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_BIN_DIRS)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}
