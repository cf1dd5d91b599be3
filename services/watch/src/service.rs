//! `taskwire.v1.WatchService/WatchTask` with the contract's stream semantics:
//! - after_seq = 0: the current state first (the record caught up with the stream, as
//!   GetStatus shows it; seq = the newest event's), then every later event in order;
//!   after_seq = N: every event with seq > N, then live ones.
//! - seq strictly increases; nothing is sent twice or skipped; the stream ends OK
//!   right after the terminal event.
//!
//! No gap between the snapshot and the live feed: a watcher joins the hub *before* it
//! reads the record, then fills anything between the record and the first live event
//! from TASKWIRE_EVENTS. The same refill repairs a missed core message (detected by
//! Nats-Last-Sequence) and a watcher the hub dropped for being slow.

use std::{collections::HashMap, pin::Pin};

use taskwire::{
    auth::{self, Principal, Scope},
    domain::{Labels, TaskId, TaskKind},
    json,
    limits::{self, Permit, Quota},
    nats::{self, History, Stored},
    pb::{
        internal::v1::Event,
        v1::{
            TaskEvent, TaskState, WatchTaskRequest, WatchTasksRequest,
            watch_service_server::WatchService,
        },
    },
    store::{Store, TaskRecord},
    telemetry::metrics,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    error::WatchError,
    hub::{Hub, Live},
};

/// Events buffered per stream towards the client, and per watcher in the hub. Together
/// they bound a stream's memory; a client slower than this is caught up from the stream.
pub const CLIENT_BUFFER: usize = 16;
pub const HUB_BUFFER: usize = 64;

/// The WatchService implementation; cheap to clone.
#[derive(Debug, Clone)]
pub struct WatchApi {
    pub(crate) hub: Hub,
    /// Ends open streams (UNAVAILABLE, resumable) when the server shuts down, so the
    /// drain does not wait for clients to leave.
    pub(crate) stop: tokio_util::sync::CancellationToken,
    pub(crate) store: Store,
    pub(crate) history: History,
    /// Tree watches read the events stream through consumers of their own.
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) quotas: Quotas,
}

/// How many streams a tenant, and WatchTasks streams a key, may hold open.
#[derive(Debug, Clone)]
pub struct Quotas {
    pub tenant_streams: Quota,
    pub watch_all_per_key: Quota,
}

impl Quotas {
    /// A place for one more stream of `principal`'s (both quotas for WatchTasks).
    fn admit(&self, principal: &Principal, watch_all: bool) -> Result<Vec<Permit>, Status> {
        let tenant = principal.tenant();
        let mut permits = vec![place(
            &self.tenant_streams,
            tenant.as_str(),
            "this tenant",
            "streams",
        )?];
        if watch_all {
            permits.push(place(
                &self.watch_all_per_key,
                &principal.key_id,
                "this key",
                "WatchTasks streams",
            )?);
        }
        Ok(permits)
    }
}

/// A place in `quota` for `key`, or RESOURCE_EXHAUSTED saying `who` has the most
/// `what` it may open (retry in a second: streams end all the time).
fn place(quota: &Quota, key: &str, who: &str, what: &str) -> Result<Permit, Status> {
    quota.acquire(key).ok_or_else(|| {
        limits::exhausted(
            format!(
                "{who} has {} {what} open on this replica; close one or retry later",
                quota.max()
            ),
            std::time::Duration::from_secs(1),
        )
    })
}

/// What a stream's task queues for tonic. Boxed because tokio allocates a channel's
/// slots 32 at a time: 32 unboxed `TaskEvent`s were 6.7 KB of every stream's memory.
pub(crate) type Outgoing = Result<Box<TaskEvent>, Status>;

/// A server stream of events, fed through a channel of [`Outgoing`].
pub type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<TaskEvent, Status>> + Send>>;

fn event_stream(rx: mpsc::Receiver<Outgoing>) -> EventStream {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map(|e| *e)))
}

/// Events queued per WatchTasks stream in the hub.
pub const FIREHOSE_BUFFER: usize = 1024;

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchTaskStream = EventStream;
    type WatchTasksStream = EventStream;

    #[tracing::instrument(skip_all)]
    async fn watch_tasks(
        &self,
        req: Request<WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let principal = auth::principal(&req)?;
        let permits = self.quotas.admit(&principal, true)?;
        let scope = principal.scope;
        let WatchTasksRequest {
            kind,
            labels,
            state,
        } = req.into_inner();
        let state = taskwire::domain::parse_state_filter(state).map_err(WatchError::from)?;
        let kind = if kind.is_empty() {
            None
        } else {
            Some(TaskKind::parse(&kind).map_err(WatchError::from)?)
        };
        let labels = Labels::parse(&labels).map_err(WatchError::from)?;
        let sub = self
            .hub
            .subscribe_all(kind.map(|k| k.to_string()), FIREHOSE_BUFFER);
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let open = OpenStream::new("WatchTasks", permits);
        tokio::spawn(firehose(
            open,
            sub,
            Filter {
                labels,
                scope,
                state,
            },
            self.store.clone(),
            tx,
            self.stop.clone(),
        ));
        Ok(Response::new(event_stream(rx)))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn watch_task(
        &self,
        req: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let principal = auth::principal(&req)?;
        let permits = self.quotas.admit(&principal, false)?;
        let scope = principal.scope;
        let WatchTaskRequest {
            task_id,
            after_seq,
            tree,
        } = req.into_inner();
        let id = TaskId::parse(&task_id).map_err(WatchError::from)?;
        if tree {
            return self.watch_tree(id, after_seq, &scope, permits).await;
        }
        // Join the hub first: whatever is stored after this is also queued for us.
        let sub = self.hub.subscribe(id, HUB_BUFFER);
        // A fresh watch starts from the record with the newest stored event folded in:
        // both are read at once.
        let (record, newest) = tokio::join!(self.store.get_task(id), async {
            if after_seq == 0 {
                Some(self.history.last(id).await)
            } else {
                None
            }
        });
        let record = record
            .map_err(WatchError::from)?
            // Another tenant's task is NOT_FOUND, as a missing one is.
            .filter(|r| scope.sees(&r.tenant))
            .ok_or(WatchError::NotFound(id))?;
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        let watcher = Watcher {
            id,
            out: tx,
            last_sent: after_seq,
            api: self.clone(),
        };
        if after_seq > 0 {
            metrics::counter!(metrics::WATCH_RESUMES).increment(1);
        }
        tokio::spawn(watcher.run(OpenStream::new("WatchTask", permits), record, newest, sub));
        Ok(Response::new(event_stream(rx)))
    }
}

impl WatchApi {
    /// WatchTask with `tree` (`crate::tree`).
    async fn watch_tree(
        &self,
        id: TaskId,
        after_seq: u64,
        scope: &Scope,
        permits: Vec<Permit>,
    ) -> Result<Response<EventStream>, Status> {
        let record = self
            .store
            .get_task(id)
            .await
            .map_err(WatchError::from)?
            .filter(|r| scope.sees(&r.tenant))
            .ok_or(WatchError::NotFound(id))?;
        if after_seq > 0 {
            metrics::counter!(metrics::WATCH_RESUMES).increment(1);
        }
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        // Resumed at or past the tree's end: nothing more to send.
        if after_seq > 0
            && let Ok(Some(last)) = self.history.last(id).await
            && last.is_terminal()
            && last.seq <= after_seq
        {
            return Ok(Response::new(event_stream(rx)));
        }
        tokio::spawn(crate::tree::watch_tree(
            self.clone(),
            OpenStream::new("WatchTask", permits),
            id,
            record.kind,
            after_seq,
            tx,
        ));
        Ok(Response::new(event_stream(rx)))
    }
}

/// One WatchTask stream.
struct Watcher {
    id: TaskId,
    out: mpsc::Sender<Outgoing>,
    /// The seq of the last event sent (or the client's after_seq).
    last_sent: u64,
    api: WatchApi,
}

/// Why a stream ended.
enum End {
    /// The terminal event was sent: the stream ends OK.
    Finished,
    /// The client left.
    Gone,
    /// It ends early with this error, which says where to resume.
    Failed(WatchError),
}

impl Watcher {
    /// `newest` is the task's newest stored event, read for a fresh watch (after_seq
    /// = 0) beside the record; `None` for a resume.
    async fn run(
        mut self,
        _open: OpenStream,
        record: TaskRecord,
        newest: Option<Result<Option<Stored>, nats::Error>>,
        mut sub: crate::hub::Subscription,
    ) {
        let result = async {
            if let Some(newest) = newest {
                // The current state: the record with every stored event it has not seen
                // folded in, so a watch started after GetStatus never shows less than it
                // did. That read goes to the newest stored event, read after the hub
                // was joined: nothing is left to refill.
                let mut record = record;
                let events_failed = |source| {
                    End::Failed(WatchError::Events {
                        source,
                        resume_after: 0,
                    })
                };
                let newest = newest.map_err(events_failed)?;
                // A watch started right after a short task ended (the recorder still
                // behind) would otherwise read each event in between, one NATS round
                // trip each, to show what the last one alone says.
                let limit = if newest.as_ref().is_some_and(Stored::shows_whole_task) {
                    0
                } else {
                    usize::MAX
                };
                self.api
                    .history
                    .catch_up(&mut record, newest, limit)
                    .await
                    .map_err(events_failed)?;
                self.send_snapshot(&record).await?;
            } else {
                self.refill().await?;
                // Resumed at or past the end (after_seq >= the terminal event's seq):
                // the stream has nothing more to send and ends now.
                if let Ok(Some(last)) = self.api.history.last(self.id).await
                    && last.seq <= self.last_sent
                    && last.is_terminal()
                {
                    return Err(End::Finished);
                }
            }
            loop {
                let live = tokio::select! {
                    _ = self.out.closed() => return Err(End::Gone),
                    _ = self.api.stop.cancelled() => {
                        return Err(End::Failed(WatchError::ShuttingDown {
                            resume_after: Some(self.last_sent),
                        }));
                    }
                    l = sub.rx.recv() => l,
                };
                match live {
                    Some(live) => self.live(live).await?,
                    None => {
                        // The hub dropped us (too slow): join again, then refill.
                        sub = self.api.hub.subscribe(self.id, HUB_BUFFER);
                        self.refill().await?;
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) | Err(End::Finished) | Err(End::Gone) => {}
            Err(End::Failed(e)) => {
                let _ = self.out.send(Err(e.into())).await;
            }
        }
    }

    /// The record as the first event (after_seq = 0).
    async fn send_snapshot(&mut self, r: &TaskRecord) -> Result<(), End> {
        let t = r.to_proto();
        let event = TaskEvent {
            task_id: t.id,
            seq: r.last_seq,
            time: t.updated_at,
            state: t.state,
            progress: t.progress,
            attempt: t.attempt,
            output: t.output,
            error: t.error,
            message: String::new(),
            parent_id: String::new(),
            kind: String::new(),
        };
        self.last_sent = r.last_seq;
        self.emit(event).await
    }

    async fn live(&mut self, live: Live) -> Result<(), End> {
        if live.seq <= self.last_sent {
            return Ok(()); // Already sent (by the snapshot or a refill).
        }
        if live.prev_seq > self.last_sent {
            // Something between what we sent and this event never reached us.
            return self.refill().await;
        }
        let event = to_public(self.id, live.seq, &live.event);
        self.last_sent = live.seq;
        self.emit(event).await
    }

    /// Sends every stored event after `last_sent`, from TASKWIRE_EVENTS.
    async fn refill(&mut self) -> Result<(), End> {
        loop {
            let next = self
                .api
                .history
                .next_after(self.id, self.last_sent)
                .await
                .map_err(|source| {
                    End::Failed(WatchError::Events {
                        source,
                        resume_after: self.last_sent,
                    })
                })?;
            let Some(stored) = next else { return Ok(()) };
            self.last_sent = stored.seq;
            self.emit(to_public(self.id, stored.seq, &stored.event))
                .await?;
        }
    }

    /// Sends one event; ends the stream after a terminal one.
    async fn emit(&mut self, event: TaskEvent) -> Result<(), End> {
        metrics::counter!(metrics::WATCH_EVENTS_SENT, "rpc" => "WatchTask").increment(1);
        let terminal = TaskState::try_from(event.state).is_ok_and(TaskState::is_terminal);
        self.out
            .send(Ok(Box::new(event)))
            .await
            .map_err(|_| End::Gone)?;
        if terminal { Err(End::Finished) } else { Ok(()) }
    }
}

/// Which tasks' events a WatchTasks stream forwards, besides its kind.
struct Filter {
    labels: Labels,
    scope: Scope,
    /// Only events in this state (from the event: no lookup).
    state: Option<TaskState>,
}

impl Filter {
    /// Whether every task passes without reading its record.
    fn passes_all(&self) -> bool {
        self.labels.is_empty() && self.scope == Scope::All
    }

    fn admits(&self, r: &TaskRecord) -> bool {
        if !self.scope.sees(&r.tenant) {
            return false;
        }
        let have: HashMap<String, String> = serde_json::from_str(&r.labels).unwrap_or_default();
        self.labels.iter().all(|(k, v)| have.get(k) == Some(v))
    }
}

/// One WatchTasks stream: forwards the feed, filtered by tenant and labels (which
/// events do not carry: each task's are read once from its record).
async fn firehose(
    _open: OpenStream,
    mut sub: crate::hub::FirehoseSubscription,
    filter: Filter,
    store: Store,
    tx: mpsc::Sender<Outgoing>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut matches: HashMap<TaskId, bool> = HashMap::new();
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            _ = stop.cancelled() => {
                let e = WatchError::ShuttingDown { resume_after: None };
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            n = sub.rx.recv() => n,
        };
        let Some((id, live)) = next else {
            let _ = tx.send(Err(WatchError::FellBehind.into())).await;
            return;
        };
        if filter.state.is_some_and(|s| live.event.state != s as i32) {
            continue;
        }
        if !filter.passes_all() {
            let wanted = match matches.get(&id) {
                Some(m) => *m,
                None => match store.get_task(id).await {
                    Ok(record) => {
                        let m = record.is_some_and(|r| filter.admits(&r));
                        if matches.len() > 100_000 {
                            matches.clear();
                        }
                        matches.insert(id, m);
                        m
                    }
                    // Not remembered: the task's next event asks again.
                    Err(e) => {
                        tracing::warn!(task_id = %id, error = %taskwire::telemetry::chain(&e), "task unknown; event skipped");
                        false
                    }
                },
            };
            if !wanted {
                continue;
            }
        }
        if tx
            .send(Ok(Box::new(to_public(id, live.seq, &live.event))))
            .await
            .is_err()
        {
            return;
        }
        metrics::counter!(metrics::WATCH_EVENTS_SENT, "rpc" => "WatchTasks").increment(1);
    }
}

/// An open stream, counted in the streams gauge and holding its quota places while it
/// lives.
pub(crate) struct OpenStream {
    rpc: &'static str,
    _permits: Vec<Permit>,
}

impl OpenStream {
    pub(crate) fn new(rpc: &'static str, permits: Vec<Permit>) -> Self {
        metrics::gauge!(metrics::WATCH_STREAMS, "rpc" => rpc).increment(1.0);
        Self {
            rpc,
            _permits: permits,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(metrics::WATCH_STREAMS, "rpc" => self.rpc).decrement(1.0);
    }
}

pub(crate) fn to_public(id: TaskId, seq: u64, e: &Event) -> TaskEvent {
    TaskEvent {
        task_id: id.to_string(),
        seq,
        time: e
            .time
            .or_else(|| Some(json::micros_to_timestamp(json::now_micros()))),
        state: e.state,
        progress: e.progress.clone(),
        attempt: e.attempt,
        output: e.output.clone(),
        error: e.error.clone(),
        message: e.message.clone(),
        parent_id: String::new(),
        kind: String::new(),
    }
}
