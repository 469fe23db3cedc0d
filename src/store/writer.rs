//! The store's one writer: a thread that owns sled's write side. Every state
//! change arrives as a command over a bounded queue; the writer takes every
//! command waiting, applies them in order to one [`Batch`], commits the batch
//! in one sled transaction and fsyncs once for all of it (group commit: the
//! commands that arrive during a flush make the next batch, and a batch that
//! will be flushed waits up to `commit_window` for more). Only after that
//! flush is each command answered, so an answer is always durable.
//!
//! The writer also knows which request ids are in flight in this process
//! (issued, delivery not yet confirmed): a copy of one waits for its twin's
//! outcome and never issues a second code.
//!
//! It owns threads, queues and the in-flight set; what a command does to the
//! records is in `apply` and `sweep`. No sled call runs on an async worker.

use super::apply::{self, CancelOutcome, IssueOutcome, IssueStep, Rules, StatusApplied, StatusUpdate, Verified};
use super::batch::Batch;
use super::sweep::{SWEEP_SLICE, SweepCursor, SweepRules, sweep};
use super::{Store, StoreError, SweepReport, Trees};
use crate::domain::limits::Policies;
use crate::domain::{Code, KeyRing, Phone, ValidRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Commands the writer takes in one batch at the most.
const MAX_BATCH: usize = 512;

/// What the writer needs besides the database.
pub struct WriterSettings {
    /// Digest keys (the current one and those still verifying).
    pub keys: KeyRing,
    /// Send, verify, geo and pumping policies.
    pub policies: Policies,
    /// Wrong codes allowed before a code is locked.
    pub max_attempts: u8,
    /// Commands that may wait for the writer before callers wait to send.
    pub queue: usize,
    /// How long a batch that must be flushed waits for more commands to
    /// share its fsync (zero: flush at once).
    pub commit_window: Duration,
}

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Issue {
        request: Box<ValidRequest>,
        now: OffsetDateTime,
        answer: Answer<IssueOutcome>,
    },
    Queued {
        request_id: String,
    },
    Release {
        request_id: String,
    },
    Status {
        update: StatusUpdate,
        answer: Answer<StatusApplied>,
    },
    Verify {
        phone: Phone,
        code: Code,
        app: Option<String>,
        now: OffsetDateTime,
        answer: Answer<Verified>,
    },
    Cancel {
        request_id: String,
        now: OffsetDateTime,
        answer: Answer<CancelOutcome>,
    },
    Sweep {
        now: OffsetDateTime,
        retention: time::Duration,
        cursor: SweepCursor,
        answer: Answer<(SweepReport, Option<SweepCursor>)>,
    },
    LiftQuarantine {
        prefix: String,
        now: OffsetDateTime,
        answer: Answer<bool>,
    },
    Flush {
        answer: Answer<()>,
    },
}

struct Envelope {
    command: Command,
    /// A place in the bounded queue, given back once the command is applied.
    _permit: Option<OwnedSemaphorePermit>,
}

/// The handle of the writer: cheap to clone; the writer stops once every
/// handle is dropped, after committing and flushing what it took.
#[derive(Clone)]
pub struct Writer {
    commands: mpsc::Sender<Envelope>,
    room: Arc<Semaphore>,
    store: Store,
}

fn gone() -> StoreError {
    StoreError::Flush("the store writer stopped".into())
}

impl Writer {
    /// Starts the writer over `store`.
    pub fn start(store: Store, settings: WriterSettings) -> Result<Self, StoreError> {
        let (commands, inbox) = mpsc::channel();
        let window = settings.commit_window;
        let rules = Rules { keys: settings.keys, policies: settings.policies, max_attempts: settings.max_attempts };
        let trees = store.trees.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                WriterLoop { trees, rules, in_flight: HashMap::new(), must_flush: false, force_flush: false, window }
                    .run(&inbox)
            })
            .map_err(|e| StoreError::Flush(e.to_string()))?;
        Ok(Self { commands, room: Arc::new(Semaphore::new(settings.queue.max(1))), store })
    }

    /// The read side of the same database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn call<T>(&self, command: impl FnOnce(Answer<T>) -> Command) -> Result<T, StoreError> {
        let permit = self.room.clone().acquire_owned().await.map_err(|_| gone())?;
        let (answer, answered) = oneshot::channel();
        let envelope = Envelope { command: command(answer), _permit: Some(permit) };
        self.commands.send(envelope).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    fn note(&self, command: Command) {
        // Notes bypass the bound: each settles an issue already in the queue's count.
        let _ = self.commands.send(Envelope { command, _permit: None });
    }

    /// Issues a code for `request` (see [`IssueOutcome`]). `Issued` means the
    /// digest is durable; the caller then queues the delivery and calls
    /// [`Writer::queued`], or [`Writer::release`] if it could not.
    pub async fn issue(&self, request: ValidRequest, now: OffsetDateTime) -> Result<IssueOutcome, StoreError> {
        self.call(|answer| Command::Issue { request: Box::new(request), now, answer }).await
    }

    /// The delivery of an issued request is confirmed by the broker: copies
    /// waiting for it are told it is a duplicate.
    pub fn queued(&self, request_id: &str) {
        self.note(Command::Queued { request_id: request_id.to_owned() });
    }

    /// An issued request's delivery could not be queued (its message will be
    /// redelivered): copies waiting for it are told to try again.
    pub fn release(&self, request_id: &str) {
        self.note(Command::Release { request_id: request_id.to_owned() });
    }

    /// Applies a status event or a receipt.
    pub async fn apply_status(&self, update: StatusUpdate) -> Result<StatusApplied, StoreError> {
        self.call(|answer| Command::Status { update, answer }).await
    }

    /// Checks `code` for `phone`; the answer comes after its effect is durable.
    pub async fn verify(&self, phone: &Phone, code: &Code, now: OffsetDateTime) -> Result<Verified, StoreError> {
        self.verify_as(phone, code, None, now).await
    }

    /// Like [`Writer::verify`], for a caller limited to application `app`:
    /// another application's code is not found.
    pub async fn verify_as(
        &self,
        phone: &Phone,
        code: &Code,
        app: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Verified, StoreError> {
        let (phone, code, app) = (phone.clone(), code.clone(), app.map(str::to_owned));
        self.call(|answer| Command::Verify { phone, code, app, now, answer }).await
    }

    /// Cancels a request's code.
    pub async fn cancel(&self, request_id: &str, now: OffsetDateTime) -> Result<CancelOutcome, StoreError> {
        let request_id = request_id.to_owned();
        self.call(|answer| Command::Cancel { request_id, now, answer }).await
    }

    /// Removes what has run its course (see [`SweepReport`]), one slice of
    /// keys per command, so other commands go on between slices.
    pub async fn sweep(&self, now: OffsetDateTime, retention: time::Duration) -> Result<SweepReport, StoreError> {
        let (mut report, mut cursor) = (SweepReport::default(), Some(SweepCursor::default()));
        while let Some(from) = cursor.take() {
            let (slice, next) = self.call(|answer| Command::Sweep { now, retention, cursor: from, answer }).await?;
            report.add(slice);
            cursor = next;
        }
        Ok(report)
    }

    /// Lifts the quarantine of `prefix`; whether one was in force.
    pub async fn lift_quarantine(&self, prefix: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let prefix = prefix.to_owned();
        self.call(|answer| Command::LiftQuarantine { prefix, now, answer }).await
    }

    /// Makes every change so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|answer| Command::Flush { answer }).await
    }
}

/// An answer held until the batch that decided it is durable.
type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn later<T: Send + 'static>(done: &mut Vec<Done>, answer: Answer<T>, value: Result<T, StoreError>) {
    done.push(Box::new(move |failed: Option<&StoreError>| {
        let _ = answer.send(match (value, failed) {
            (Ok(_), Some(e)) => Err(e.clone()),
            (value, _) => value,
        });
    }));
}

struct WriterLoop {
    trees: Trees,
    rules: Rules,
    /// Request ids issued by this process whose delivery is not yet
    /// confirmed, each with the copies waiting for its outcome.
    in_flight: HashMap<String, Vec<Answer<IssueOutcome>>>,
    /// The current batch holds an answered command that changed something,
    /// so its answer must wait for a flush. (A command that changed nothing is
    /// answered without one, and so are the `Queued` and `Release` notes: a
    /// lost "queued" mark costs at most one more SMS of the same code, so it
    /// rides on the next flush.)
    must_flush: bool,
    /// A `Flush` command is in the current batch.
    force_flush: bool,
    /// See [`WriterSettings::commit_window`].
    window: Duration,
}

impl WriterLoop {
    fn run(mut self, inbox: &mpsc::Receiver<Envelope>) {
        while let Ok(first) = inbox.recv() {
            let trees = self.trees.clone();
            let mut batch = Batch::new(&trees);
            let (mut done, mut issued) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + self.window;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(envelope) = next.take() {
                self.apply(&mut batch, envelope.command, &mut done, &mut issued);
                taken += 1;
                if taken < MAX_BATCH {
                    next = self.next_command(inbox, deadline);
                }
            }
            let (must, force) = (std::mem::take(&mut self.must_flush), std::mem::take(&mut self.force_flush));
            let durable = batch.commit().and_then(|changes| {
                if force || must && !changes.is_empty() {
                    trees.db.flush().map(drop).map_err(StoreError::from)
                } else {
                    Ok(())
                }
            });
            if durable.is_err() {
                // Nothing of this batch is known to be stored: its issues are not in flight.
                for id in issued {
                    for waiter in self.in_flight.remove(&id).unwrap_or_default() {
                        let _ = waiter.send(Ok(IssueOutcome::InProgress));
                    }
                }
            }
            for answer in done {
                answer(durable.as_ref().err());
            }
        }
    }

    /// The next command of this batch: one already waiting, or, once the
    /// batch must be flushed, one that arrives before `deadline`.
    fn next_command(&self, inbox: &mpsc::Receiver<Envelope>, deadline: Instant) -> Option<Envelope> {
        if let Ok(waiting) = inbox.try_recv() {
            return Some(waiting);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        (self.must_flush && !left.is_zero()).then(|| inbox.recv_timeout(left).ok()).flatten()
    }

    fn apply(&mut self, b: &mut Batch<'_>, command: Command, done: &mut Vec<Done>, issued: &mut Vec<String>) {
        let answered = !matches!(command, Command::Queued { .. } | Command::Release { .. });
        let before = b.writes();
        self.dispatch(b, command, done, issued);
        self.must_flush |= answered && b.writes() > before;
    }

    fn dispatch(&mut self, b: &mut Batch<'_>, command: Command, done: &mut Vec<Done>, issued: &mut Vec<String>) {
        match command {
            Command::Issue { request, now, answer } => {
                let in_flight = self.in_flight.contains_key(&request.request_id);
                match kept(b, |b| self.rules.issue(b, &request, in_flight, now)) {
                    Ok(IssueStep::Wait) => self.in_flight.entry(request.request_id).or_default().push(answer),
                    Ok(IssueStep::Now(outcome)) => {
                        if matches!(outcome, IssueOutcome::Issued(_)) {
                            self.in_flight.insert(request.request_id.clone(), Vec::new());
                            issued.push(request.request_id);
                        }
                        later(done, answer, Ok(outcome));
                    }
                    Err(e) => later(done, answer, Err(e)),
                }
            }
            Command::Queued { request_id } => {
                let waiting = self.in_flight.remove(&request_id).unwrap_or_default();
                match kept(b, |b| apply::mark_queued(b, &request_id)) {
                    Ok(Some(record)) => waiting
                        .into_iter()
                        .for_each(|waiter| later(done, waiter, Ok(IssueOutcome::Duplicate(Box::new(record.clone()))))),
                    Ok(None) => waiting.into_iter().for_each(|w| later(done, w, Ok(IssueOutcome::InProgress))),
                    Err(e) => waiting.into_iter().for_each(|w| later(done, w, Err(e.clone()))),
                }
            }
            Command::Release { request_id } => {
                for waiter in self.in_flight.remove(&request_id).unwrap_or_default() {
                    later(done, waiter, Ok(IssueOutcome::InProgress));
                }
            }
            Command::Status { update, answer } => later(done, answer, kept(b, |b| apply::apply_status(b, &update))),
            Command::Verify { phone, code, app, now, answer } => {
                later(done, answer, kept(b, |b| self.rules.verify(b, &phone, &code, app.as_deref(), now)))
            }
            Command::Cancel { request_id, now, answer } => {
                later(done, answer, kept(b, |b| apply::cancel(b, &request_id, now)))
            }
            Command::Sweep { now, retention, cursor, answer } => {
                let rules = SweepRules { now, retention, policies: &self.rules.policies };
                later(done, answer, kept(b, |b| sweep(b, &rules, cursor, SWEEP_SLICE)))
            }
            Command::LiftQuarantine { prefix, now, answer } => {
                later(done, answer, kept(b, |b| apply::lift_quarantine(b, &prefix, now)))
            }
            Command::Flush { answer } => {
                self.force_flush = true;
                later(done, answer, Ok(()))
            }
        }
    }
}

/// Runs one command on `b`: keeps its staged changes if it succeeded, drops them if not.
fn kept<'t, T>(
    b: &mut Batch<'t>,
    command: impl FnOnce(&mut Batch<'t>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let result = command(b);
    match &result {
        Ok(_) => b.keep(),
        Err(_) => b.drop_staged(),
    }
    result
}
