//! `nats-server` with JetStream (Debian 12's `nats-server` package, 2.9): a temporary store
//! folder, a free port on 127.0.0.1, stopped on drop. A missing binary fails the test with
//! the command that installs it (never a silent skip).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// JetStream's file storage; kept across [`NatsServer::restart`].
    dir: PathBuf,
}

impl NatsServer {
    /// Starts a fresh server. Panics, saying how to install it, if `nats-server` is missing.
    pub fn start() -> NatsServer {
        let dir =
            std::env::temp_dir().join(format!("imagine-nats-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("create the nats-server store folder");
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server (SIGTERM, as a service manager would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port and store: streams, consumers
    /// and unacknowledged messages survive, as on a real restart.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats-server.log"))
            .expect("open the nats-server log");
        let spawned = Command::new(binary())
            .args(["-js", "-sd"])
            .arg(self.dir.join("js"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "nats-server is not installed: these tests start a real NATS JetStream server. \
                 Install it with `apt-get install -y nats-server` (Debian/Ubuntu) or put the \
                 nats-server binary (https://github.com/nats-io/nats-server/releases) on PATH"
            ),
            Err(e) => panic!("cannot start nats-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default();
                panic!("nats-server exited at start ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections on port {} within {START_LIMIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nats-server` on the PATH, else where Debian's package puts it (`/usr/sbin`, which a
/// non-root user's PATH often lacks).
fn binary() -> PathBuf {
    let debian = Path::new("/usr/sbin/nats-server");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if !on_path && debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("nats-server")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
