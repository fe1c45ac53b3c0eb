//! How far a long operation has got: counters that working threads add to ([`Meter`]), and a
//! [`Ticker`] that reports them as `step_progress` events twice a second until it is dropped.
//! A terminal shows them as a bar (`cli::report`), NDJSON carries them as they are.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::events::{Event, Reporter};

const EVERY: Duration = Duration::from_millis(500);

pub use crate::meter::Meter;

/// Reports a [`Meter`] for one step while it lives.
pub struct Ticker {
    pub bytes: Arc<AtomicU64>,
    pub objects: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The last report, made by [`Ticker::finish`].
    last: Option<Box<dyn FnOnce() + Send>>,
}

impl Ticker {
    /// Starts reporting `meter` as the progress of `step`, out of `total` bytes when known.
    pub fn start(
        meter: &Meter,
        reporter: Arc<dyn Reporter>,
        step: &str,
        total: Option<u64>,
    ) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let (bytes, objects, halt, step) = (
            meter.bytes.clone(),
            meter.objects.clone(),
            stop.clone(),
            step.to_owned(),
        );
        let report = move || {
            let n = objects.load(Ordering::Relaxed);
            reporter.emit(&Event::StepProgress {
                step: step.clone(),
                bytes: bytes.load(Ordering::Relaxed),
                total_bytes: total,
                objects: (n > 0).then_some(n),
            });
        };
        let ticking = report.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                loop {
                    std::thread::park_timeout(EVERY);
                    if halt.load(Ordering::Relaxed) {
                        return;
                    }
                    ticking();
                }
            })
            .ok();
        Ticker {
            bytes: meter.bytes.clone(),
            objects: meter.objects.clone(),
            stop,
            thread,
            last: Some(Box::new(report)),
        }
    }
}

impl Ticker {
    /// Stops, after one last report of where the operation ended (a step that took less than
    /// half a second reports that too).
    pub fn finish(mut self) {
        self.halt(true);
    }

    fn halt(&mut self, last: bool) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
            if last {
                let _ = self.last.take().map(|f| f());
            }
        }
    }
}

/// Dropped without [`Ticker::finish`] (a failure, an interruption): stops silently.
impl Drop for Ticker {
    fn drop(&mut self) {
        self.halt(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorder;

    #[test]
    fn reports_what_was_counted_and_stops_when_dropped() {
        let recorder = Arc::new(Recorder::default());
        let meter = Meter::default();
        let ticker = Ticker::start(&meter, recorder.clone(), "verify", Some(100));
        meter.add_bytes(40);
        meter.add_object();
        std::thread::sleep(EVERY * 3);
        ticker.finish();
        let seen = recorder.0.lock().expect("events").len();
        assert!(seen >= 2, "no progress reported while it ran");
        let last = recorder.0.lock().expect("events").last().cloned();
        match last {
            Some(Event::StepProgress {
                step,
                bytes,
                total_bytes,
                objects,
            }) => {
                assert_eq!(
                    (step.as_str(), bytes, total_bytes, objects),
                    ("verify", 40, Some(100), Some(1))
                );
            }
            other => panic!("{other:?}"),
        }
        std::thread::sleep(EVERY * 2);
        assert_eq!(
            recorder.0.lock().expect("events").len(),
            seen,
            "still reporting"
        );
    }

    #[test]
    fn a_short_step_reports_its_end_and_a_dropped_one_nothing() {
        let recorder = Arc::new(Recorder::default());
        let meter = Meter::default();
        let ticker = Ticker::start(&meter, recorder.clone(), "images", None);
        meter.add_bytes(7);
        ticker.finish();
        let events = recorder.0.lock().expect("events").clone();
        assert!(
            matches!(
                events.as_slice(),
                [Event::StepProgress {
                    bytes: 7,
                    total_bytes: None,
                    ..
                }]
            ),
            "{events:?}"
        );
        let quiet = Arc::new(Recorder::default());
        drop(Ticker::start(&meter, quiet.clone(), "images", None));
        assert!(quiet.0.lock().expect("events").is_empty());
    }
}
