//! Download progress: bars per file and overall (bytes, rate, ETA) on a terminal, plain
//! lines otherwise (a line per file start/end and every 10 s), nothing with `--quiet`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::{
    io::IsTerminal,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars on stderr.
    Bars,
    /// Plain lines on stderr.
    Lines,
    /// Nothing but warnings through `tracing`.
    Quiet,
}

impl Mode {
    /// Bars when stderr is a terminal, lines otherwise; `quiet` wins.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

struct Lines {
    file: String,
    size: u64,
    pos: u64,
    started: Instant,
    last: Instant,
}

/// A progress reporter for one pull.
pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
    overall: Mutex<Option<ProgressBar>>,
    current: Mutex<Option<ProgressBar>>,
    lines: Mutex<Option<Lines>>,
}

/// `1.5 GB`, `320 MB`: sizes for people.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

impl Progress {
    /// A reporter in `mode`.
    pub fn new(mode: Mode) -> Self {
        let multi = match mode {
            Mode::Bars => MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            _ => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        };
        Self {
            mode,
            multi,
            overall: Mutex::new(None),
            current: Mutex::new(None),
            lines: Mutex::new(None),
        }
    }

    pub(crate) fn begin(&self, repo: &str, files: usize, bytes: u64) {
        match self.mode {
            Mode::Bars => {
                let pb = self
                    .multi
                    .add(ProgressBar::new(bytes))
                    .with_style(bar_style());
                pb.set_message(format!("{repo} ({files} files)"));
                *self.overall.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb);
            }
            Mode::Lines => eprintln!(
                "[pull] {repo}: {files} file(s), {} to download",
                human_size(bytes)
            ),
            Mode::Quiet => {}
        }
    }

    pub(crate) fn start(&self, file: &str, size: u64, have: u64) {
        match self.mode {
            Mode::Bars => {
                let pb = self
                    .multi
                    .add(ProgressBar::new(size))
                    .with_style(bar_style());
                pb.set_message(short(file));
                pb.set_position(have);
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb);
            }
            Mode::Lines => {
                let resume = if have > 0 {
                    format!(", resuming at {}", human_size(have))
                } else {
                    String::new()
                };
                eprintln!("[pull] {file}: {}{resume}", human_size(size));
                let now = Instant::now();
                *self.lines.lock().unwrap_or_else(|p| p.into_inner()) = Some(Lines {
                    file: file.to_owned(),
                    size,
                    pos: have,
                    started: now,
                    last: now,
                });
            }
            Mode::Quiet => {}
        }
        if have > 0 {
            self.advance_overall(have);
        }
    }

    fn advance_overall(&self, n: u64) {
        if let Some(pb) = &*self.overall.lock().unwrap_or_else(|p| p.into_inner()) {
            pb.inc(n);
        }
    }

    pub(crate) fn advance(&self, n: u64) {
        self.advance_overall(n);
        if let Some(pb) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            pb.inc(n);
        }
        if let Some(l) = &mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()) {
            l.pos += n;
            if l.last.elapsed() >= Duration::from_secs(10) {
                l.last = Instant::now();
                let secs = l.started.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "[pull] {}: {}/{} ({:.0}%), {}/s",
                    l.file,
                    human_size(l.pos),
                    human_size(l.size),
                    100.0 * l.pos as f64 / l.size.max(1) as f64,
                    human_size((l.pos as f64 / secs) as u64)
                );
            }
        }
    }

    /// The file's bytes so far were dropped (restart from 0).
    pub(crate) fn restart(&self, _file: &str) {
        if let Some(pb) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            if let Some(o) = &*self.overall.lock().unwrap_or_else(|p| p.into_inner()) {
                o.set_position(o.position().saturating_sub(pb.position()));
            }
            pb.set_position(0);
        }
        if let Some(l) = &mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()) {
            l.pos = 0;
        }
    }

    pub(crate) fn done(&self, file: &str) {
        if let Some(pb) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            pb.finish();
        }
        if let Some(l) = self.lines.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let secs = l.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "[pull] {file}: done, verified ({} in {secs:.1} s)",
                human_size(l.size)
            );
        }
    }

    pub(crate) fn fail(&self, _file: &str) {
        if let Some(pb) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            pb.abandon();
        }
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub(crate) fn skip(&self, file: &str, size: u64, why: &str) {
        if self.mode == Mode::Lines {
            eprintln!("[pull] {file}: {} {why}", human_size(size));
        }
    }

    pub(crate) fn note(&self, msg: &str) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(msg);
            }
            Mode::Lines => eprintln!("[pull] {msg}"),
            Mode::Quiet => tracing::info!("{msg}"),
        }
    }

    pub(crate) fn end(&self) {
        if let Some(pb) = self
            .overall
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            pb.finish();
        }
    }
}

/// Name, bar, bytes, rate, ETA — the same for the overall and the per-file bars.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("a valid progress template")
    .progress_chars("=> ")
}

fn short(path: &str) -> String {
    let n = path.chars().count();
    if n <= 28 {
        path.to_owned()
    } else {
        format!("…{}", path.chars().skip(n - 27).collect::<String>())
    }
}
