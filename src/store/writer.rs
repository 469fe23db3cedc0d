//! The store's one writer: a thread that owns sled's write side. Every state
//! change arrives as a command over a bounded queue; the writer takes every
//! command waiting, applies them in order to one [`Batch`], commits the batch
//! in one sled transaction, and hands it to a flusher thread that fsyncs once
//! for every batch waiting (group commit). Only after that flush is each
//! command answered, so an answer is always durable.
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
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

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
    commands: mpsc::UnboundedSender<Envelope>,
    room: Arc<Semaphore>,
    store: Store,
}

fn gone() -> StoreError {
    StoreError::Flush("the store writer stopped".into())
}

impl Writer {
    /// Starts the writer (and its flusher) over `store`.
    pub fn start(store: Store, settings: WriterSettings) -> Result<Self, StoreError> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let (flushes, flusher) = std::sync::mpsc::channel();
        let db = store.trees.db.clone();
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || run_flusher(&db, &flusher))
            .map_err(|e| StoreError::Flush(e.to_string()))?;
        let rules = Rules { keys: settings.keys, policies: settings.policies, max_attempts: settings.max_attempts };
        let trees = store.trees.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                WriterLoop { trees, rules, in_flight: HashMap::new(), flushes, force_flush: false }.run(inbox)
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
        let (phone, code) = (phone.clone(), code.clone());
        self.call(|answer| Command::Verify { phone, code, now, answer }).await
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

/// What the flusher gets for each batch: whether it wrote anything (or a
/// flush was asked for; `Err` if the commit itself failed), and its answers.
type Flushed = (Result<bool, StoreError>, Vec<Done>);

struct WriterLoop {
    trees: Trees,
    rules: Rules,
    /// Request ids issued by this process whose delivery is not yet
    /// confirmed, each with the copies waiting for its outcome.
    in_flight: HashMap<String, Vec<Answer<IssueOutcome>>>,
    flushes: std::sync::mpsc::Sender<Flushed>,
    /// A `Flush` command is in the current batch.
    force_flush: bool,
}

impl WriterLoop {
    fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Envelope>) {
        while let Some(first) = inbox.blocking_recv() {
            let trees = self.trees.clone();
            let mut batch = Batch::new(&trees);
            let (mut done, mut issued) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(envelope) = next.take() {
                self.apply(&mut batch, envelope.command, &mut done, &mut issued);
                taken += 1;
                if taken < MAX_BATCH {
                    next = inbox.try_recv().ok();
                }
            }
            let forced = std::mem::take(&mut self.force_flush);
            let committed = batch.commit().map(|changes| forced || !changes.is_empty());
            if committed.is_err() {
                // Nothing of this batch is stored: its issues are not in flight.
                for id in issued {
                    for waiter in self.in_flight.remove(&id).unwrap_or_default() {
                        let _ = waiter.send(Ok(IssueOutcome::InProgress));
                    }
                }
            }
            if self.flushes.send((committed, done)).is_err() {
                return;
            }
        }
    }

    fn apply(&mut self, b: &mut Batch<'_>, command: Command, done: &mut Vec<Done>, issued: &mut Vec<String>) {
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
            Command::Verify { phone, code, now, answer } => {
                later(done, answer, kept(b, |b| self.rules.verify(b, &phone, &code, now)))
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

/// Flushes once for every batch waiting, then answers their commands.
fn run_flusher(db: &sled::Db, batches: &std::sync::mpsc::Receiver<Flushed>) {
    while let Ok(first) = batches.recv() {
        let mut waiting = vec![first];
        waiting.extend(batches.try_iter());
        let wrote = waiting.iter().any(|(committed, _)| matches!(committed, Ok(true)));
        let flushed = if wrote { db.flush().map(drop).map_err(StoreError::from) } else { Ok(()) };
        for (committed, done) in waiting {
            let failed = committed.as_ref().err().or(flushed.as_ref().err());
            for answer in done {
                answer(failed);
            }
        }
    }
}
