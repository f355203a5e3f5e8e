//! Worker threads that run batches in parallel, each on an MLX stream of its own.
//!
//! MLX runs a CPU stream's kernels on that stream's thread, and only its matmuls (through
//! BLAS) use more than one core: batches in flight on different streams keep every core
//! busy. The threads live as long as the model, so their streams and compiled functions
//! are made once. (MLX keeps a stream's own thread for the life of the process: one per
//! worker per model load.)

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads.
pub struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Start `n` workers named `{name}-{i}`.
    pub fn new(n: usize, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..n)
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        // MLX streams belong to the thread that makes them.
                        let stream = mlx_rs::Stream::new_with_device(&mlx_rs::Device::cpu());
                        mlx_rs::with_stream(&stream, || loop {
                            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => break,
                            }
                        })
                    })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            jobs: Some(tx),
            threads,
        })
    }

    /// Number of workers.
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Run every task on the workers; results in task order. A task that panics gives
    /// `Err` with the panic message (the worker carries on).
    pub fn run<T: Send + 'static>(
        &self,
        tasks: Vec<Box<dyn FnOnce() -> T + Send>>,
    ) -> Vec<Result<T, String>> {
        let n = tasks.len();
        let (reply, results) = mpsc::channel();
        let jobs = self.jobs.as_ref().expect("pool is running");
        for (i, task) in tasks.into_iter().enumerate() {
            let reply = reply.clone();
            let job: Job = Box::new(move || {
                let out = catch_unwind(AssertUnwindSafe(task)).map_err(|p| {
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a worker panicked".into())
                });
                let _ = reply.send((i, out));
            });
            if jobs.send(job).is_err() {
                break;
            }
        }
        drop(reply);
        let mut out: Vec<Option<Result<T, String>>> = (0..n).map(|_| None).collect();
        for (i, r) in results.iter() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("the worker threads are gone".into())))
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::Array;

    /// Threads inherit their creator's name: those named after the pool are its workers
    /// and the stream threads MLX made for them (one each).
    fn threads_named(prefix: &str) -> usize {
        thread_ids()
            .filter(|id| {
                std::fs::read_to_string(format!("/proc/self/task/{id}/comm"))
                    .is_ok_and(|c| c.starts_with(prefix))
            })
            .count()
    }

    /// Ids of this process's threads now.
    fn thread_ids() -> impl Iterator<Item = String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
    }

    fn doubling(n: usize) -> Vec<Box<dyn FnOnce() -> f32 + Send>> {
        (0..n)
            .map(|i| {
                Box::new(move || {
                    let a = Array::from_f32(i as f32)
                        .multiply(Array::from_f32(2.0))
                        .unwrap();
                    a.eval().unwrap();
                    a.item_exact::<f32>()
                }) as Box<dyn FnOnce() -> f32 + Send>
            })
            .collect()
    }

    #[test]
    fn runs_in_order_survives_panics_and_leaves_no_threads() {
        let pool = Pool::new(2, "pooltest").unwrap();
        let ok =
            |r: Vec<Result<f32, String>>| r.into_iter().map(Result::unwrap).collect::<Vec<_>>();
        assert_eq!(ok(pool.run(doubling(5))), [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert!(threads_named("pooltest") >= 2);
        // Bounded, not growing per call: each worker plus, once it has run MLX work, the
        // one stream thread MLX starts for it (named after it; started lazily, so the
        // count is only bounded). A per-call leak would pass the bound within a few calls.
        for _ in 0..6 {
            ok(pool.run(doubling(8)));
            let n = threads_named("pooltest");
            assert!(n <= 2 * pool.size(), "{n} threads: grew with use");
        }

        let mut tasks = doubling(2);
        tasks.insert(1, Box::new(|| panic!("boom")));
        let out = pool.run(tasks);
        assert!(out[1].as_ref().unwrap_err().contains("boom"), "{out:?}");
        assert_eq!(out[2], Ok(2.0));
        assert_eq!(ok(pool.run(doubling(3))), [0.0, 2.0, 4.0]);

        // The ids of the worker threads (each task reports the thread it ran on).
        let tid = || {
            std::fs::read_link("/proc/thread-self")
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let tasks = (0..16)
            .map(|_| Box::new(tid) as Box<dyn FnOnce() -> String + Send>)
            .collect();
        let workers: std::collections::BTreeSet<String> =
            pool.run(tasks).into_iter().map(Result::unwrap).collect();
        assert!(!workers.is_empty());
        drop(pool);
        // The workers are gone (MLX keeps each worker's stream thread, which is not one).
        let left: Vec<_> = thread_ids().filter(|t| workers.contains(t)).collect();
        assert!(
            left.is_empty(),
            "worker threads {left:?} left after the pool dropped"
        );
    }
}
