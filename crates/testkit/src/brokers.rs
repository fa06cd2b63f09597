//! Real broker processes (mosquitto, tansu) on free loopback ports.
//!
//! Each broker runs in its own temporary directory, is killed on drop, and can be killed and
//! restarted on the same port. A missing binary fails the test with a pointer to
//! `scripts/install-brokers.sh`; tests never pass silently without their broker.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::metrics::metric;
pub use crate::wait::eventually;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Finds a broker binary on PATH or in the usual places, or fails the test clearly.
pub fn binary(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    candidates.push(Path::new("/usr/sbin").join(name));
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin").join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found (PATH, /usr/sbin, ~/.cargo/bin): run scripts/install-brokers.sh")
        })
}

fn wait_listening(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("broker exited with {status} before listening on {port}:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "broker not listening on {port} after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the tests run as root (mosquitto then needs `user root` to keep its privileges).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// A broker process on a fixed port with its own directory; killed on drop.
pub struct Process {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Process {
    /// A process not started yet, with a free port and a fresh directory.
    #[allow(clippy::new_without_default)] // picks a port and makes a directory: not a default
    pub fn new() -> Process {
        Process {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        }
    }

    /// Its own directory (configuration, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("broker.log")
    }

    /// Spawns `command` (output to the log) and waits until it listens on the port.
    pub fn spawn(&mut self, mut command: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("broker log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn broker");
        wait_listening(self.port, &mut child, &self.log_path());
        self.child = Some(child);
    }

    /// Waits until the running process listens on another `port` too (a second listener).
    pub fn wait_listening(&mut self, port: u16) {
        let log = self.log_path();
        let child = self.child.as_mut().expect("spawned");
        wait_listening(port, child, &log);
    }

    /// SIGKILL: a crash; nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "-TERM");
            let _ = child.wait();
        }
    }

    /// Sends `sig` (as `kill` takes it, e.g. `-HUP`).
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            signal(child, sig);
        }
    }

    /// What it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Mosquitto options.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep sessions and messages across restarts (saved on a clean stop).
    pub persistence: bool,
    /// `(user, password)` pairs; when set, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Serve TLS with this certificate (see [`TestPki`]).
    pub tls: Option<TestPki>,
    /// More configuration lines, appended as they are (e.g. `max_packet_size 2000\n`).
    pub extra_config: String,
}

/// A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate for 127.0.0.1 (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl TestPki {
    /// Writes the CA and the server certificate into `dir`, file names prefixed with `name`.
    pub fn create(dir: &Path, name: &str) -> TestPki {
        let path = |file: &str| dir.join(format!("{name}-{file}"));
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl not found: run scripts/install-brokers.sh");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
        let (cert, key, csr, ext) = (
            path("server.pem"),
            path("server.key"),
            path("server.csr"),
            path("ext.cnf"),
        );
        let s = |p: &PathBuf| p.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "2",
            "-extfile",
            &s(&ext),
        ]);
        TestPki { ca, cert, key }
    }
}

/// A mosquitto process.
pub struct Mosquitto {
    /// The port of its listener.
    pub port: u16,
    process: Process,
    options: MosquittoOptions,
}

impl Mosquitto {
    /// Starts mosquitto with `options` and waits until it listens.
    pub fn start(options: MosquittoOptions) -> Mosquitto {
        let process = Process::new();
        let mut m = Mosquitto {
            port: process.port,
            process,
            options,
        };
        m.write_passwords(&m.options.users.clone());
        m.spawn();
        m
    }

    /// `mqtt://` (or `mqtts://` with TLS) and its address.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Rewrites the password file (takes effect on start or [`Mosquitto::reload`]).
    pub fn write_passwords(&self, users: &[(String, String)]) {
        if self.options.users.is_empty() {
            return;
        }
        let file = self.process.dir().join("passwords");
        std::fs::write(&file, "").expect("password file");
        for (user, password) in users {
            let status = Command::new(binary("mosquitto_passwd"))
                .arg("-b")
                .arg(&file)
                .arg(user)
                .arg(password)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed");
        }
    }

    fn spawn(&mut self) {
        let dir = self.process.dir();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             log_dest stderr\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 1000\n\
             persistence {persistence}\n\
             persistence_location {dir}/\n\
             autosave_interval 3600\n",
            port = self.port,
            persistence = self.options.persistence,
            dir = dir.display(),
        );
        if running_as_root() {
            conf.push_str("user root\n");
        }
        if let Some(pki) = &self.options.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ));
        }
        if self.options.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                dir.join("passwords").display()
            ));
        }
        conf.push_str(&self.options.extra_config);
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let mut command = Command::new(binary("mosquitto"));
        command.arg("-c").arg(&conf_path);
        self.process.spawn(command);
    }

    /// SIGKILL: a crash; nothing is saved.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM: a clean stop; with persistence the database is saved.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts again on the same port (and directory).
    pub fn restart(&mut self) {
        self.process.kill();
        self.spawn();
    }

    /// SIGHUP: reload the password file.
    pub fn reload(&self) {
        self.process.signal("-HUP");
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A tansu process with in-memory storage.
pub struct Tansu {
    /// The port of its Kafka listener.
    pub port: u16,
    process: Process,
    /// Started with `--authentication`: clients must authenticate (SASL).
    authenticating: bool,
}

impl Tansu {
    /// Starts tansu (no authentication) and waits until it listens.
    pub fn start() -> Tansu {
        Tansu::start_with(false)
    }

    /// A tansu that requires client authentication (and knows no users).
    pub fn start_authenticating() -> Tansu {
        Tansu::start_with(true)
    }

    fn start_with(authenticating: bool) -> Tansu {
        let process = Process::new();
        let mut t = Tansu {
            port: process.port,
            process,
            authenticating,
        };
        t.spawn();
        t
    }

    /// The `bootstrap.servers` value.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(binary("tansu"));
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        if self.authenticating {
            command.arg("--authentication");
        }
        self.process.spawn(command);
    }

    /// SIGKILL: a crash (its in-memory storage is lost).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.process.kill();
        self.spawn();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
