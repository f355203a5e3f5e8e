//! Out-of-process plugins (opt-in, `--isolate NAME` / `MLXENGINE_ISOLATE`): the library
//! runs in a child process (`mlxengine plugin-worker LIB`), the host talks to it over the
//! child's stdin/stdout, and a crash of the library (a segfault, an abort) is an error of
//! the call it happened in — the child is started again for the next call, and each
//! model reloads in it on first use. The plugin is the same library, unchanged: the
//! child loads it as the host would and serves the ABI's calls.
//!
//! Frames are a 4-byte little-endian length and a JSON object, at most [`MAX_FRAME`]
//! bytes. The host asks `{"descriptor":null}`, `{"probe":..}`, `{"estimate":..}`,
//! `{"load":..}`, `{"info":H}`, `{"embed":[H,..]}`, `{"tokenize":[H,..]}`, `{"score":[H,..]}`, `{"adapter":[H,..]}`,
//! `{"generate":[H,..]}`, `{"drop":H}`
//! and gets `{"ok":..}`, `{"err":PluginError}` or `{"none":null}`. During `generate`
//! the child sends `{"event":..}` (answered `{"control":..}`), `{"poll_join":null}`
//! (answered `{"join":..}`), `{"finished":[i,..]}`, `{"rejected":..}` and `{"cached":[i,n]}`.
//!
//! Calls to one isolated plugin run one at a time (one child, one pipe).

use crate::plugins::{load_library, PluginHandle, Runtime};
use abi_stable::{
    sabi_trait::TD_Opaque,
    sabi_types::RMut,
    std_types::{ROption, RResult},
};
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    lora::{AdapterRequest, AdapterResponse},
    score::{ScoreRequest, ScoreResponse, TokenizeRequest, TokenizeResponse},
    text::{
        GenerateOutput, GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TokenSink,
        TokenSinkMut, TokenSink_TO,
    },
    ErrorKind, EstimateRequest, LoadRequest, MemoryEstimate, Model, ModelBox, ModelInfo, Model_TO,
    PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
};

/// Largest frame either side accepts (2048 embeddings of 4096 floats as JSON fit).
pub const MAX_FRAME: usize = 256 << 20;

/// The executable that runs `plugin-worker`: `MLXENGINE_WORKER_EXE`, else this one.
fn worker_exe() -> io::Result<PathBuf> {
    match std::env::var_os("MLXENGINE_WORKER_EXE") {
        Some(p) => Ok(p.into()),
        None => std::env::current_exe(),
    }
}

fn write_frame(w: &mut impl Write, v: &Value) -> io::Result<()> {
    let bytes = serde_json::to_vec(v)?;
    if bytes.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a message of {} bytes is over the {MAX_FRAME}-byte frame limit",
            bytes.len()
        )));
    }
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

/// The next frame; `None` at the end of the stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Value>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a frame of {len} bytes is over the limit"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(serde_json::from_slice(&buf)?))
}

fn field<T: DeserializeOwned>(v: &Value, key: &str) -> io::Result<T> {
    serde_json::from_value(v.get(key).cloned().unwrap_or(Value::Null))
        .map_err(|e| io::Error::other(format!("`{key}`: {e}")))
}

fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------
// Host side.

/// A running child.
struct Running {
    child: Child,
    tx: BufWriter<ChildStdin>,
    rx: BufReader<ChildStdout>,
}

/// The child process of one isolated plugin library.
pub struct Worker {
    lib: PathBuf,
    /// The running child (None: start one at the next call) and how many were started:
    /// a model loaded in child number `n` must be loaded again in a later one.
    proc: Mutex<(Option<Running>, u64)>,
}

/// What a call sends back while it runs (generation's stream).
type OnStream<'a> = &'a mut dyn FnMut(&Value, &mut Running) -> io::Result<()>;

impl Worker {
    fn start(&self) -> io::Result<Running> {
        let mut child = Command::new(worker_exe()?)
            .arg("plugin-worker")
            .arg(&self.lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let tx = BufWriter::new(child.stdin.take().expect("piped"));
        let rx = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Running { child, tx, rx })
    }

    /// Why the child stopped answering, as the call's error; the child is reaped and
    /// the next call starts a new one.
    fn crashed(&self, running: Option<Running>, during: &str, e: &io::Error) -> PluginError {
        let status = running.and_then(|mut r| {
            let _ = r.child.kill();
            r.child.wait().ok()
        });
        let how = match status {
            Some(s) => describe_exit(s),
            None => "could not be started".into(),
        };
        tracing::warn!(lib = %self.lib.display(), "isolated plugin {how} during `{during}` ({e})");
        PluginError::new(
            ErrorKind::INTERNAL,
            format!(
                "the isolated plugin process ({}) {how} during `{during}`; it is started again \
                 for the next call",
                self.lib.display()
            ),
        )
    }

    /// Send `msg` (for model `slot`, loaded first in this child if need be) and wait for
    /// its answer, passing stream frames to `on_stream`. `Ok(None)`: the plugin has no
    /// such entry (`{"none":null}`).
    fn call<T: DeserializeOwned>(
        &self,
        slot: Option<&ModelSlot>,
        during: &str,
        msg: impl FnOnce(u64) -> Value,
        on_stream: OnStream<'_>,
    ) -> Result<Option<T>, PluginError> {
        let mut proc = self.proc.lock().unwrap_or_else(|p| p.into_inner());
        if proc.0.is_none() {
            match self.start() {
                Ok(r) => {
                    proc.0 = Some(r);
                    proc.1 += 1;
                }
                Err(e) => return Err(self.crashed(None, during, &e)),
            }
        }
        let epoch = proc.1;
        let running = proc.0.as_mut().expect("started above");
        let handle = match slot {
            None => 0,
            Some(s) => {
                let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
                match *st {
                    Some((e, h)) if e == epoch => h,
                    _ => {
                        let loaded =
                            exchange(running, &json!({"load": s.load}), &mut |_, _| Ok(()));
                        match loaded {
                            Ok(reply) => match answer::<(u64, ModelInfo)>(reply, "load") {
                                Ok(Some((h, _))) => {
                                    *st = Some((epoch, h));
                                    h
                                }
                                Ok(None) => return Err(PluginError::unsupported("load")),
                                Err(e) => return Err(e),
                            },
                            Err(e) => {
                                let r = proc.0.take();
                                return Err(self.crashed(r, "load", &e));
                            }
                        }
                    }
                }
            }
        };
        match exchange(running, &msg(handle), on_stream) {
            Ok(reply) => answer(reply, during),
            Err(e) => {
                let r = proc.0.take();
                Err(self.crashed(r, during, &e))
            }
        }
    }

    /// [`call`](Self::call) without a stream.
    fn simple<T: DeserializeOwned>(
        &self,
        slot: Option<&ModelSlot>,
        during: &str,
        msg: impl FnOnce(u64) -> Value,
    ) -> Result<Option<T>, PluginError> {
        self.call(slot, during, msg, &mut |_, _| Ok(()))
    }
}

/// Write `msg`, then read frames until the answer (`ok`, `err` or `none`), passing the
/// others to `on_stream`.
fn exchange(r: &mut Running, msg: &Value, on_stream: OnStream<'_>) -> io::Result<Value> {
    write_frame(&mut r.tx, msg)?;
    loop {
        let Some(frame) = read_frame(&mut r.rx)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the pipe closed",
            ));
        };
        if frame.get("ok").is_some() || frame.get("err").is_some() || frame.get("none").is_some() {
            return Ok(frame);
        }
        on_stream(&frame, r)?;
    }
}

/// The answer frame of call `during`: its value, `None` for `{"none":null}`, or the
/// plugin's error.
fn answer<T: DeserializeOwned>(reply: Value, during: &str) -> Result<Option<T>, PluginError> {
    let bad = |what: &str, e: serde_json::Error| {
        PluginError::new(ErrorKind::INTERNAL, format!("`{during}`: {what}: {e}"))
    };
    if let Some(e) = reply.get("err") {
        return Err(
            serde_json::from_value(e.clone()).unwrap_or_else(|e| bad("unreadable error", e))
        );
    }
    if reply.get("none").is_some() {
        return Ok(None);
    }
    serde_json::from_value(reply.get("ok").cloned().unwrap_or(Value::Null))
        .map(Some)
        .map_err(|e| bad("bad answer", e))
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            let name = match sig {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                9 => " (SIGKILL: out of memory?)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    format!("exited ({s})")
}

/// Start an isolated plugin from library `path`: its descriptor comes from a child.
pub fn open(path: &Path) -> Result<PluginHandle, String> {
    let worker = Arc::new(Worker {
        lib: path.to_owned(),
        proc: Mutex::new((None, 0)),
    });
    let descriptor: PluginDescriptor = worker
        .simple(None, "descriptor", |_| json!({"descriptor": null}))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no descriptor", path.display()))?;
    Ok(PluginHandle {
        path: path.to_owned(),
        runtime: Runtime::Isolated(worker),
        descriptor,
    })
}

impl Worker {
    pub(crate) fn probe(&self, req: &ProbeRequest) -> RResult<Probe, PluginError> {
        self.simple(None, "probe", |_| json!({"probe": req}))
            .and_then(|p| p.ok_or_else(|| PluginError::unsupported("probe")))
            .into()
    }

    pub(crate) fn estimate(&self, req: &EstimateRequest) -> RResult<MemoryEstimate, PluginError> {
        self.simple(None, "estimate", |_| json!({"estimate": req}))
            .and_then(|p| p.ok_or_else(|| PluginError::unsupported("estimate")))
            .into()
    }

    pub(crate) fn load_model(
        self: &Arc<Self>,
        req: &LoadRequest,
    ) -> RResult<ModelBox, PluginError> {
        let slot = ModelSlot {
            load: req.clone(),
            state: Mutex::new(None),
        };
        // Load now (errors belong to the load), and keep the facts.
        let info: Result<Option<ModelInfo>, PluginError> =
            self.simple(Some(&slot), "load", |h| json!({"info": h}));
        match info {
            Ok(Some(info)) => RResult::ROk(Model_TO::from_value(
                Proxy {
                    worker: self.clone(),
                    slot,
                    info,
                },
                TD_Opaque,
            )),
            Ok(None) => RResult::RErr(PluginError::unsupported("info")),
            Err(e) => RResult::RErr(e),
        }
    }
}

/// A model in an isolated plugin: what loads it, and its handle in the current child.
struct ModelSlot {
    load: LoadRequest,
    state: Mutex<Option<(u64, u64)>>,
}

/// The host's side of a model loaded in a child.
struct Proxy {
    worker: Arc<Worker>,
    slot: ModelSlot,
    info: ModelInfo,
}

impl Model for Proxy {
    fn info(&self) -> ModelInfo {
        self.worker
            .simple(Some(&self.slot), "info", |h| json!({"info": h}))
            .ok()
            .flatten()
            .unwrap_or_else(|| self.info.clone())
    }

    fn embed(&self, req: &EmbedRequest) -> RResult<EmbedResponse, PluginError> {
        self.worker
            .simple(
                Some(&self.slot),
                "embed",
                |h| json!({"embed": [h, to_value(req)]}),
            )
            .and_then(|r| r.ok_or_else(|| PluginError::unsupported("embeddings")))
            .into()
    }

    fn tokenize(&self, req: &TokenizeRequest) -> RResult<TokenizeResponse, PluginError> {
        self.worker
            .simple(
                Some(&self.slot),
                "tokenize",
                |h| json!({"tokenize": [h, to_value(req)]}),
            )
            .and_then(|r| r.ok_or_else(|| PluginError::unsupported("tokenizing")))
            .into()
    }

    fn adapter(&self, req: &AdapterRequest) -> RResult<AdapterResponse, PluginError> {
        self.worker
            .simple(
                Some(&self.slot),
                "adapter",
                |h| json!({"adapter": [h, to_value(req)]}),
            )
            .and_then(|r| r.ok_or_else(|| PluginError::unsupported("LoRA adapters")))
            .into()
    }

    fn score(&self, req: &ScoreRequest) -> RResult<ScoreResponse, PluginError> {
        self.worker
            .simple(
                Some(&self.slot),
                "score",
                |h| json!({"score": [h, to_value(req)]}),
            )
            .and_then(|r| r.ok_or_else(|| PluginError::unsupported("scoring")))
            .into()
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        mut sink: TokenSinkMut<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        let mut on_stream = |frame: &Value, r: &mut Running| -> io::Result<()> {
            if let Some(ev) = frame.get("event") {
                let ev: StreamEvent = serde_json::from_value(ev.clone())?;
                let control = sink.on_event(&ev);
                write_frame(&mut r.tx, &json!({"control": control}))
            } else if frame.get("poll_join").is_some() {
                let joined: Option<GenerateRequest> = sink.poll_join().into_option();
                write_frame(&mut r.tx, &json!({"join": joined}))
            } else if let Some(f) = frame.get("finished") {
                let (index, out): (u32, GenerateOutput) = serde_json::from_value(f.clone())?;
                sink.on_finished(index, &out);
                Ok(())
            } else if let Some(e) = frame.get("rejected") {
                let e: PluginError = serde_json::from_value(e.clone())?;
                sink.on_rejected(&e);
                Ok(())
            } else if let Some(c) = frame.get("cached") {
                let (index, tokens): (u32, u32) = serde_json::from_value(c.clone())?;
                sink.on_prompt_cached(index, tokens);
                Ok(())
            } else {
                Err(io::Error::other(format!("unexpected frame {frame}")))
            }
        };
        self.worker
            .call(
                Some(&self.slot),
                "generate",
                |h| json!({"generate": [h, to_value(req)]}),
                &mut on_stream,
            )
            .and_then(|r| r.ok_or_else(|| PluginError::unsupported("text generation")))
            .into()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let st = *self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut proc = self.worker.proc.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = proc.1;
        if let (Some((e, h)), Some(r)) = (st, proc.0.as_mut()) {
            if e == epoch {
                let _ = exchange(r, &json!({"drop": h}), &mut |_, _| Ok(()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child side.

/// `mlxengine plugin-worker LIB`: serve library `lib`'s calls on stdin/stdout until
/// stdin closes. Returns the process exit code.
pub fn worker_main(lib: &Path) -> i32 {
    // The protocol keeps the real stdout; fd 1 becomes stderr, so that whatever the
    // library prints cannot corrupt a frame.
    #[cfg(unix)]
    let out = {
        use std::os::fd::FromRawFd;
        // SAFETY: plain fd duplication on this process's own standard streams.
        let proto = unsafe { libc::dup(1) };
        if proto < 0 || unsafe { libc::dup2(2, 1) } < 0 {
            eprintln!("plugin-worker: cannot set up the pipe");
            return 2;
        }
        // SAFETY: `proto` is a fresh descriptor owned by nobody else.
        unsafe { std::fs::File::from_raw_fd(proto) }
    };
    #[cfg(not(unix))]
    let out = std::io::stdout();
    let mut out = BufWriter::new(out);
    let mut inp = BufReader::new(std::io::stdin().lock());
    let plugin = match load_library(lib) {
        Ok(p) => p,
        Err(e) => {
            let _ = write_frame(
                &mut out,
                &json!({"err": PluginError::new(ErrorKind::LOAD, e)}),
            );
            return 1;
        }
    };
    let Runtime::Library(module) = plugin.runtime else {
        return 1;
    };
    let mut models: HashMap<u64, ModelBox> = HashMap::new();
    let mut next = 1u64;
    loop {
        let msg = match read_frame(&mut inp) {
            Ok(Some(m)) => m,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("plugin-worker: {e}");
                return 2;
            }
        };
        let reply = serve_one(
            &msg,
            &module,
            &plugin.descriptor,
            &mut models,
            &mut next,
            &mut inp,
            &mut out,
        );
        let reply = reply.unwrap_or_else(|e| {
            json!({"err": PluginError::new(ErrorKind::INVALID_REQUEST, format!("plugin-worker: {e}"))})
        });
        if write_frame(&mut out, &reply).is_err() {
            return 0; // the host is gone
        }
    }
}

fn result<T: Serialize>(r: RResult<T, PluginError>) -> Value {
    match r {
        RResult::ROk(v) => json!({"ok": v}),
        RResult::RErr(e) => json!({"err": e}),
    }
}

fn serve_one(
    msg: &Value,
    module: &plugin_api::PluginModRef,
    descriptor: &PluginDescriptor,
    models: &mut HashMap<u64, ModelBox>,
    next: &mut u64,
    inp: &mut impl Read,
    out: &mut impl Write,
) -> io::Result<Value> {
    let model = |models: &HashMap<u64, ModelBox>, h: u64| -> io::Result<()> {
        if models.contains_key(&h) {
            Ok(())
        } else {
            Err(io::Error::other(format!("no model {h}")))
        }
    };
    Ok(if msg.get("descriptor").is_some() {
        json!({"ok": descriptor})
    } else if msg.get("probe").is_some() {
        let req: ProbeRequest = field(msg, "probe")?;
        result((module.probe())(&req))
    } else if msg.get("estimate").is_some() {
        let req: EstimateRequest = field(msg, "estimate")?;
        match module.estimate() {
            Some(f) => result(f(&req)),
            None => json!({"none": null}),
        }
    } else if msg.get("load").is_some() {
        let req: LoadRequest = field(msg, "load")?;
        match (module.load_model())(&req) {
            RResult::ROk(m) => {
                let info = m.info();
                let h = *next;
                *next += 1;
                models.insert(h, m);
                json!({"ok": (h, info)})
            }
            RResult::RErr(e) => json!({"err": e}),
        }
    } else if msg.get("info").is_some() {
        let h: u64 = field(msg, "info")?;
        model(models, h)?;
        json!({"ok": models[&h].info()})
    } else if msg.get("drop").is_some() {
        let h: u64 = field(msg, "drop")?;
        models.remove(&h);
        json!({"ok": null})
    } else if msg.get("embed").is_some() {
        let (h, req): (u64, EmbedRequest) = field(msg, "embed")?;
        model(models, h)?;
        result(models[&h].embed(&req))
    } else if msg.get("tokenize").is_some() {
        let (h, req): (u64, TokenizeRequest) = field(msg, "tokenize")?;
        model(models, h)?;
        result(models[&h].tokenize(&req))
    } else if msg.get("adapter").is_some() {
        let (h, req): (u64, AdapterRequest) = field(msg, "adapter")?;
        model(models, h)?;
        result(models[&h].adapter(&req))
    } else if msg.get("score").is_some() {
        let (h, req): (u64, ScoreRequest) = field(msg, "score")?;
        model(models, h)?;
        result(models[&h].score(&req))
    } else if msg.get("generate").is_some() {
        let (h, req): (u64, GenerateRequest) = field(msg, "generate")?;
        model(models, h)?;
        let mut sink = ChildSink {
            inp,
            out,
            broken: false,
        };
        let sink_to = TokenSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque);
        result(models[&h].generate(&req, sink_to))
    } else {
        return Err(io::Error::other(format!("unknown message {msg}")));
    })
}

/// The child's `TokenSink`: each callback is a frame to the host (and, for events and
/// joins, its answer).
struct ChildSink<'a, R: Read, W: Write> {
    inp: &'a mut R,
    out: &'a mut W,
    /// The pipe failed: stop the generation, the host is gone.
    broken: bool,
}

impl<R: Read, W: Write> ChildSink<'_, R, W> {
    fn ask(&mut self, msg: &Value, key: &str) -> Option<Value> {
        if self.broken {
            return None;
        }
        let reply = write_frame(self.out, msg).and_then(|_| read_frame(self.inp));
        match reply {
            Ok(Some(v)) => v.get(key).cloned(),
            _ => {
                self.broken = true;
                None
            }
        }
    }

    fn tell(&mut self, msg: &Value) {
        if !self.broken && write_frame(self.out, msg).is_err() {
            self.broken = true;
        }
    }
}

impl<R: Read, W: Write> TokenSink for ChildSink<'_, R, W> {
    fn on_event(&mut self, event: &StreamEvent) -> StreamControl {
        self.ask(&json!({"event": event}), "control")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or(StreamControl::Stop)
    }

    fn poll_join(&mut self) -> ROption<GenerateRequest> {
        self.ask(&json!({"poll_join": null}), "join")
            .and_then(|v| serde_json::from_value::<Option<GenerateRequest>>(v).ok())
            .flatten()
            .into()
    }

    fn on_finished(&mut self, index: u32, output: &GenerateOutput) {
        self.tell(&json!({"finished": (index, output)}));
    }

    fn on_rejected(&mut self, error: &PluginError) {
        self.tell(&json!({"rejected": error}));
    }

    fn on_prompt_cached(&mut self, index: u32, tokens: u32) {
        self.tell(&json!({"cached": (index, tokens)}));
    }
}
