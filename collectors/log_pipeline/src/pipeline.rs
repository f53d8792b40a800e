//! Wires one config into running parts: a tailer thread per file source (a journalctl
//! reader task per journald source), a task per sink with a bounded channel in front of it,
//! and a checkpointer per source.
//!
//! Stopping is graceful: tailers stop reading, sinks deliver what they hold, checkpoints are
//! written last. Whatever a sink could not deliver within the grace period is not
//! acknowledged, so it is read again by the next pipeline (a reload) or after a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::checkpoint::{self, CheckpointError, CheckpointWriter, FilesCheckpoint, SourceProgress};
use crate::config::Config;
use crate::sink::{SinkError, SinkSetup, SinkTask};
use crate::source::SourceSetup;
use crate::source::journald::{self, JournaldHandle};
use crate::source::tailer::{self, TailerHandle};
use crate::stats::Stats;

/// How long tailers get to end once the sinks were aborted.
const TAILER_ABORT_WAIT: Duration = Duration::from_secs(1);

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A directory or file the config names cannot be created or written.
    #[error("{field}: {message}")]
    NotWritable {
        /// The option naming it (`checkpoint_dir`, `sinks.vl.buffer.path`, ...).
        field: String,
        /// What failed, naming the path.
        message: String,
    },
    /// A checkpoint file cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A sink cannot be built.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A thread could not be started.
    #[error("cannot start a tailer thread: {0}")]
    Spawn(std::io::Error),
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    tailers: Vec<TailerHandle>,
    journals: Vec<JournaldHandle>,
    sinks: Vec<tokio::task::JoinHandle<()>>,
    checkpointers: Vec<tokio::task::JoinHandle<()>>,
    abort: watch::Sender<bool>,
    checkpoint_stop: watch::Sender<bool>,
}

impl Pipeline {
    /// What a start would refuse, without starting anything (a reload checks it before it
    /// stops the running pipeline): every directory the config names created and written to,
    /// every HTTP client built (TLS files read).
    pub fn check(config: &Config) -> Result<(), PipelineError> {
        Pipeline::verify(config, true).map(drop)
    }

    /// What `--dry-run` checks: what [`Pipeline::check`] checks, without creating anything.
    /// The directories a start would create, with the option naming each.
    pub fn plan(config: &Config) -> Result<Vec<(String, PathBuf)>, PipelineError> {
        Pipeline::verify(config, false)
    }

    fn verify(config: &Config, create: bool) -> Result<Vec<(String, PathBuf)>, PipelineError> {
        let mut missing = Vec::new();
        for w in &config.writable {
            let dir = w
                .check(create)
                .map_err(|message| PipelineError::NotWritable {
                    field: w.field.clone(),
                    message,
                })?;
            missing.extend(dir.map(|d| (w.field.clone(), d)));
        }
        for sink in &config.sinks {
            crate::sink::check(sink)?;
        }
        Ok(missing)
    }

    /// Starts everything `config` describes. Must be called inside a tokio runtime.
    pub fn start(config: &Config, stats: &Arc<Stats>) -> Result<Pipeline, PipelineError> {
        Pipeline::check(config)?;
        let mut checkpoints = Vec::new();
        let mut journal_starts = Vec::new();
        let mut progress = Vec::new();
        for source in &config.sources {
            let path = checkpoint::path_for(&config.checkpoint_dir, &source.name);
            journal_starts.push(match source.journald {
                Some(_) => Some(journald::load(&journald::checkpoint_path(
                    &config.checkpoint_dir,
                    &source.name,
                ))?),
                None => None,
            });
            let loaded = match checkpoint::load(&path) {
                Ok(c) => c,
                Err(e @ CheckpointError::Corrupt { .. }) => {
                    // Nothing is lost: every file is read again from its beginning.
                    warn!(error = %e, "Corrupt checkpoint ignored; files are read again from the start.");
                    Some(Vec::new())
                }
                Err(e) => return Err(e.into()),
            };
            checkpoints.push(loaded);
            let subscribed = config
                .sinks
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inputs.contains(&progress.len()))
                .map(|(i, _)| i)
                .collect();
            progress.push(Arc::new(SourceProgress::new(subscribed)));
        }

        let (abort, abort_rx) = watch::channel(false);
        let mut senders: Vec<Vec<tokio::sync::mpsc::Sender<_>>> =
            vec![Vec::new(); config.sources.len()];
        let mut sink_tasks = Vec::new();
        for (i, sink) in config.sinks.iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::channel(sink.buffer_chunks);
            stats.sink(&sink.name).watch_buffer(&tx);
            for &src in &sink.inputs {
                senders[src].push(tx.clone());
            }
            let task = SinkTask::new(SinkSetup {
                index: i,
                config: sink.clone(),
                rx,
                progress: progress
                    .iter()
                    .enumerate()
                    .map(|(s, p)| sink.inputs.contains(&s).then(|| p.clone()))
                    .collect(),
                stats: stats.clone(),
                abort: abort_rx.clone(),
            })?;
            sink_tasks.push(task);
        }
        let sinks = sink_tasks
            .into_iter()
            .map(|t| tokio::spawn(t.run()))
            .collect();

        let (checkpoint_stop, stop_rx) = watch::channel(false);
        let mut tailers = Vec::new();
        let mut journals = Vec::new();
        let mut writers: Vec<Box<dyn CheckpointWriter>> = Vec::new();
        for (i, ((source, outputs), checkpoint)) in config
            .sources
            .iter()
            .zip(senders)
            .zip(checkpoints)
            .enumerate()
        {
            let setup = SourceSetup {
                index: i,
                source: source.clone(),
                progress: progress[i].clone(),
                outputs,
                stats: stats.clone(),
            };
            if let Some(start) = journal_starts[i].take() {
                let (journal, cursor) = journald::spawn(setup, &config.checkpoint_dir, start);
                journals.push(journal);
                writers.push(Box::new(cursor));
                continue;
            }
            writers.push(Box::new(FilesCheckpoint::new(checkpoint::path_for(
                &config.checkpoint_dir,
                &source.name,
            ))));
            let handle = tailer::spawn(setup, checkpoint);
            match handle {
                Ok(h) => tailers.push(h),
                Err(e) => {
                    for t in &tailers {
                        t.request_stop();
                    }
                    let _ = abort.send(true);
                    return Err(PipelineError::Spawn(e));
                }
            }
        }
        // After the sources: they registered the entries of the last checkpoints, so that the
        // first checkpoint written holds them.
        let checkpointers = config
            .sources
            .iter()
            .zip(&progress)
            .zip(writers)
            .map(|((source, p), writer)| {
                tokio::spawn(checkpoint::run_checkpointer(
                    p.clone(),
                    writer,
                    stats.source(&source.name).checkpoint.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        info!(
            sources = config.sources.len(),
            sinks = config.sinks.len(),
            "Pipeline started."
        );
        Ok(Pipeline {
            tailers,
            journals,
            sinks,
            checkpointers,
            abort,
            checkpoint_stop,
        })
    }

    /// Stops reading, lets the sinks deliver what they hold for up to `grace`, and writes the
    /// final checkpoints.
    pub async fn stop(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for t in &self.tailers {
            t.request_stop();
        }
        for j in &self.journals {
            j.request_stop();
        }
        let readers_done = |p: &Pipeline| {
            p.tailers.iter().all(TailerHandle::is_finished)
                && p.journals.iter().all(JournaldHandle::is_finished)
        };
        // Tailers blocked on a full buffer finish once the sinks take from it or abort.
        while !readers_done(&self) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !readers_done(&self) {
            let _ = self.abort.send(true);
            // Aborted sinks close their channels: a tailer waiting on one ends at once.
            let aborted_at = Instant::now();
            while !readers_done(&self) && aborted_at.elapsed() < TAILER_ABORT_WAIT {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut journals = std::mem::take(&mut self.journals);
        for j in &mut journals {
            j.join_reader().await;
        }
        // Never joined blindly: a tailer stuck in a system call (a hung network file system)
        // is left behind, told to stop, rather than holding the process past its grace.
        for mut t in std::mem::take(&mut self.tailers) {
            if t.is_finished() {
                t.join();
            } else {
                warn!("A file reader did not stop in time (a system call hangs?); left behind.");
            }
        }
        // The senders are gone: sinks flush and end.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut sinks = std::mem::take(&mut self.sinks);
        if tokio::time::timeout(remaining, futures_join(&mut sinks))
            .await
            .is_err()
        {
            warn!("Sinks did not deliver everything in time; the rest is re-read later.");
            let _ = self.abort.send(true);
            // Aborted sinks end at once; a disk buffer must be closed before a new pipeline
            // opens it. (A handle already awaited must not be polled again.)
            sinks.retain(|h| !h.is_finished());
            let _ = tokio::time::timeout(Duration::from_secs(2), futures_join(&mut sinks)).await;
        }
        let _ = self.checkpoint_stop.send(true);
        for c in std::mem::take(&mut self.checkpointers) {
            let _ = c.await;
        }
        info!("Pipeline stopped.");
    }
}

async fn futures_join(handles: &mut [tokio::task::JoinHandle<()>]) {
    for h in handles {
        let _ = h.await;
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for t in &self.tailers {
            t.request_stop();
        }
        // Their journalctl is killed as the reader task ends.
        for j in &self.journals {
            j.request_stop();
        }
        let _ = self.abort.send(true);
        let _ = self.checkpoint_stop.send(true);
    }
}
