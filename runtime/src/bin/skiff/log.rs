//! Where skiff's log lines go, and the one line of fuser's it leaves out.

use std::fmt;
use std::io::{self, IsTerminal};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Logs to stderr at `filter` (an `EnvFilter` directive; `warn` if it does not parse).
pub fn init(filter: &str) {
    subscriber(filter, io::stderr, io::stderr().is_terminal()).init();
}

fn subscriber<W>(filter: &str, writer: W, ansi: bool) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colours only on a terminal: not into logs, pipes or files.
        .with_ansi(ansi)
        // A log line that cannot be written (stderr a closed pipe, as in `2>&1 | head`) is
        // dropped. Reporting it would print to that stderr and panic whichever thread logged,
        // a FUSE worker or the thread that unmounts.
        .log_internal_errors(false)
        .finish()
        .with(VanishedRequests::new())
}

/// Drops fuser's error for a reply the kernel no longer waits for.
///
/// When a process blocked on the mount gets a signal, the kernel sends FUSE_INTERRUPT for its
/// request. fuser answers every interrupt with ENOSYS (after which the kernel sends no more),
/// and if skiff answered the request itself first, the kernel has nothing left to match that
/// answer to: the write fails with ENOENT and fuser logs it as an error. Nobody lost a reply,
/// so the line would only be noise on the container's stderr. Any other failure to reply
/// (a malformed reply, a connection gone) is still logged.
struct VanishedRequests {
    line: String,
}

impl VanishedRequests {
    fn new() -> Self {
        let gone = io::Error::from_raw_os_error(libc::ENOENT);
        Self { line: format!("Failed to send FUSE reply: {gone}") }
    }
}

impl<S: Subscriber> Layer<S> for VanishedRequests {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let mut fields = Fields::default();
        event.record(&mut fields);
        // fuser logs through `log`: its target comes as a field, not in the metadata.
        let target = fields.target.as_deref().unwrap_or(event.metadata().target());
        !(target == "fuser::reply" && fields.message.as_deref() == Some(self.line.as_str()))
    }
}

/// The message of an event and, for one that came through `log`, its target.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "log.target" => self.target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            "log.target" => self.target = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything logged, as text.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;

        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    fn fuser_reply_error(errno: i32) {
        let err = io::Error::from_raw_os_error(errno);
        // As fuser logs it: through `log`, whose records tracing-log turns into events.
        tracing_log::format_trace(
            &log::Record::builder()
                .level(log::Level::Error)
                .target("fuser::reply")
                .args(format_args!("Failed to send FUSE reply: {err}"))
                .build(),
        )
        .unwrap();
    }

    #[test]
    fn only_a_reply_to_a_request_the_kernel_dropped_goes_unlogged() {
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber("warn", lines.clone(), false), || {
            fuser_reply_error(libc::ENOENT);
            fuser_reply_error(libc::ENODEV);
            tracing::error!(target: "skiff::elsewhere", "Failed to send FUSE reply: {}",
                io::Error::from_raw_os_error(libc::ENOENT));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert!(logged[0].contains("fuser::reply: Failed to send FUSE reply: No such device"), "{text}");
        assert!(logged[1].contains("skiff::elsewhere: Failed to send FUSE reply: No such file"), "{text}");
    }
}
