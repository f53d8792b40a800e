//! The dead-letter file: records a destination refused for good (400, other 4xx, a record too
//! large even alone), one JSON line each with the sink, the status and the error.

use tokio::sync::watch;
use tracing::error;

use super::client::append_synced;
use super::retry::{Aborted, Backoff, sleep_or_abort};
use crate::config::Sink;
use crate::record::{Record, write_json_string};

/// Appends `records`, refused with `status` and `message`, to the dead-letter file of `sink`,
/// retrying I/O errors (a full disk) until it works or `abort` turns true.
pub(super) async fn write(
    sink: &Sink,
    abort: &mut watch::Receiver<bool>,
    records: &[&Record],
    status: u16,
    message: &str,
) -> Result<(), Aborted> {
    let mut out = String::new();
    for r in records {
        out.push_str("{\"sink\":");
        write_json_string(&mut out, &sink.name);
        out.push_str(&format!(",\"status\":{status},\"error\":"));
        write_json_string(&mut out, message);
        out.push_str(",\"record\":");
        r.write_json(&mut out, true);
        out.push_str("}\n");
    }
    let bytes = out.into_bytes();
    let mut backoff = Backoff::new(sink.retry);
    loop {
        let path = sink.dead_letter_path.clone();
        let body = bytes.clone();
        match tokio::task::spawn_blocking(move || append_synced(&path, &body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                error!(sink = %sink.name, path = %sink.dead_letter_path.display(), error = %e, "Cannot write the dead-letter file; retrying.");
            }
            Err(e) => error!(error = %e, "Dead-letter writer failed."),
        }
        sleep_or_abort(abort, backoff.next_wait()).await?;
    }
}
