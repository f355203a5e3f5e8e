//! Replicas behind a stock load balancer (docs/deploy.md): three `mlxengine serve`
//! processes behind nginx with `deploy/nginx.conf`; under load one replica is killed and
//! another drained, and no request that had not started streaming is lost.

mod util;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx, stopped when dropped the way it stops its workers too (SIGQUIT to the master:
/// a killed master leaves them serving the port).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mlxengine serve` on a free port with the default model loaded: it and its address
/// (`HOST:PORT`).
fn replica(home: &Path) -> (Proc, String) {
    let (child, url) = util::serve(home, &["--preload", "default"]);
    let addr = url.trim_start_matches("http://").to_owned();
    (Proc(child), addr)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET /health` at `addr` answers 200.
fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is missing: run scripts/setup.sh (installs Debian's nginx-light)")
}

#[test]
fn a_replica_killed_and_one_drained_behind_nginx_lose_no_unstarted_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<(Proc, String)> = (0..3)
        .map(|i| replica(&dir.path().join(format!("home{i}"))))
        .collect();
    let port = free_port();
    let prefix = dir.path().join("nginx");
    std::fs::create_dir_all(&prefix).unwrap();
    let servers: String = replicas
        .iter()
        .map(|(_, a)| format!("server {a} max_fails=1 fail_timeout=2s;\n        "))
        .collect();
    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf"))
            .unwrap()
            .replace("@REPLICAS@", servers.trim_end())
            .replace("@PORT@", &port.to_string())
            .replace("@PREFIX@", prefix.to_str().unwrap());
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // Its output goes to its log: a worker must not hold the test harness's pipes.
    let mut lb = Nginx(
        Command::new(nginx())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx"),
    );
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while !healthy(&addr) {
        if let Some(s) = lb.0.try_wait().unwrap() {
            panic!(
                "nginx exited ({s}) with {}: {}",
                conf_path.display(),
                std::fs::read_to_string(prefix.join("stderr.log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nginx did not answer; {}",
            std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let python = engine::paths::cache_dir().join("test-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let (kill, term) = (replicas[0].0 .0.id(), replicas[1].0 .0.id());
    let o = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/server/openai_client.py"
        ))
        .args(["failover", &format!("http://{addr}")])
        .args([kill.to_string(), term.to_string()])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "failover scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("failover: {}", stdout.lines().last().unwrap_or(""));
    // The drained replica finished its streams and exited by itself, successfully.
    let drained = &mut replicas[1].0 .0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = drained.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the drained replica did not exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "drained replica exited with {status}");
    drop(lb);
}
