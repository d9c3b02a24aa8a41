//! The log writer: lines go into a shared buffer on the calling thread, and one writer thread
//! writes that buffer out in chunks.
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands each line to its worker thread
//! over a channel, so under load the worker is woken (a futex, often a `sched_yield` too) for
//! every line or few lines, once per RPC at the service's one line per call. Here the worker is
//! woken once when lines arrive after a quiet spell (so a lone line appears at once) and
//! otherwise writes whatever gathered every [`GATHER`], so a busy service pays one `write` and
//! no wake-up per line.
//!
//! Nothing is dropped: past [`HIGH_WATER`] bytes waiting, the thread that logs writes the buffer
//! out itself (so a stderr that cannot keep up slows callers down, as a direct write would), and
//! once the writer is stopped every line is written through. Lines stay in order: whoever writes
//! holds the output while taking the buffer.

use std::{
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after a write, while lines keep coming.
pub const GATHER: Duration = Duration::from_millis(20);
/// Bytes waiting at most before the logging thread writes them out itself.
pub const HIGH_WATER: usize = 256 * 1024;

/// A [`MakeWriter`] whose lines are written in chunks by a writer thread; see the module docs.
#[derive(Clone)]
pub struct ChunkedWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it wrote every line logged so far; lines logged
/// later are written through.
#[must_use = "dropping the guard stops the log writer"]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: lines arrived while it was idle, or it must stop.
    wake: Condvar,
    output: Mutex<Output>,
}

struct State {
    pending: Vec<u8>,
    /// The writer waits for lines without a deadline; the next line must wake it.
    idle: bool,
    stopped: bool,
}

struct Output {
    sink: Box<dyn Write + Send>,
    /// The previous chunk's buffer, swapped with `pending` so neither is reallocated.
    spare: Vec<u8>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChunkedWriter {
    /// A writer to `sink`, and the guard that keeps its thread running.
    pub fn new(sink: impl Write + Send + 'static, thread_name: &str) -> (Self, WriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(HIGH_WATER),
                idle: false,
                stopped: false,
            }),
            wake: Condvar::new(),
            output: Mutex::new(Output {
                sink: Box::new(sink),
                spare: Vec::with_capacity(HIGH_WATER),
            }),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || worker.run())
            .ok();
        if thread.is_none() {
            // No thread: write every line through rather than lose it.
            lock(&shared.state).stopped = true;
        }
        let guard = WriterGuard {
            shared: shared.clone(),
            thread,
        };
        (Self { shared }, guard)
    }
}

impl Shared {
    fn append(&self, line: &[u8]) {
        let mut state = lock(&self.state);
        state.pending.extend_from_slice(line);
        let wake = std::mem::take(&mut state.idle);
        let write_now = state.stopped || state.pending.len() >= HIGH_WATER;
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        if write_now {
            self.write_out();
        }
    }

    /// Writes every line appended so far.
    fn write_out(&self) {
        let mut output = lock(&self.output);
        let output = &mut *output;
        std::mem::swap(&mut lock(&self.state).pending, &mut output.spare);
        if output.spare.is_empty() {
            return;
        }
        // Nowhere to report a failed write of the log; the lines are gone either way.
        let _ = output.sink.write_all(&output.spare);
        let _ = output.sink.flush();
        output.spare.clear();
        if output.spare.capacity() > 4 * HIGH_WATER {
            output.spare.shrink_to(HIGH_WATER);
        }
    }

    /// The writer thread: wait for lines, write them, let more gather, repeat.
    fn run(&self) {
        loop {
            let mut state = lock(&self.state);
            while state.pending.is_empty() && !state.stopped {
                state.idle = true;
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.idle = false;
            let stopped = state.stopped;
            drop(state);
            self.write_out();
            if stopped {
                return;
            }
            let state = lock(&self.state);
            let _ = self
                .wake
                .wait_timeout_while(state, GATHER, |state| !state.stopped);
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).stopped = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Lines that raced with the stop.
        self.shared.write_out();
    }
}

/// One event's line. tracing-subscriber formats the whole line first and writes it at once,
/// which goes straight into the shared buffer; a line written in pieces is gathered here first,
/// so lines from different threads never interleave.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    partial: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let ends_line = buf.ends_with(b"\n");
        if self.partial.is_empty() && ends_line {
            self.shared.append(buf);
        } else {
            self.partial.extend_from_slice(buf);
            if ends_line {
                self.shared.append(&self.partial);
                self.partial.clear();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.shared.append(&self.partial);
        }
    }
}

impl<'a> MakeWriter<'a> for ChunkedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            partial: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back, counting the writes it received.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = lock(&self.0);
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_in_order_and_in_fewer_writes() {
        let sink = Sink::default();
        let (writer, guard) = ChunkedWriter::new(sink.clone(), "test-log-writer");
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for line in 0..5_000 {
                        writeln!(writer.make_writer(), "{thread} {line}").unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = lock(&sink.0).clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (thread, number) = line.split_once(' ').unwrap();
            let thread: usize = thread.parse().unwrap();
            assert_eq!(number.parse::<usize>().unwrap(), next[thread], "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line written once");
        assert!(writes < 20_000, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_the_guard() {
        let sink = Sink::default();
        let (writer, _guard) = ChunkedWriter::new(sink.clone(), "test-log-writer");
        writeln!(writer.make_writer(), "hello").unwrap();
        // The idle writer is woken by the line; poll rather than time it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&sink.0).0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lock(&sink.0).0, b"hello\n");
    }

    #[test]
    fn lines_after_the_stop_are_written_through() {
        let sink = Sink::default();
        let (writer, guard) = ChunkedWriter::new(sink.clone(), "test-log-writer");
        drop(guard);
        writeln!(writer.make_writer(), "late").unwrap();
        assert_eq!(lock(&sink.0).0, b"late\n");
    }
}
