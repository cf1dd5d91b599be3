//! `taskwire.v1.TaskService`: parses each request at the edge, then hands it to the
//! operation that owns it (submit, cancel) or to the store.

use std::{sync::Arc, time::Duration};

use async_nats::{Client, jetstream};
use taskwire::{
    auth::{self, Scope, Tenant},
    domain::{
        Caller, IdempotencyKey, InvalidInput, Labels, MAX_ATTEMPTS_LIMIT, TaskId, TaskKind,
        parse_state_filter, parse_timeout,
    },
    json,
    nats::History,
    pb::v1::{
        BulkTasksRequest, BulkTasksResponse, CancelTaskRequest, GetQueueStatsRequest,
        GetQueueStatsResponse, GetStatusRequest, ListAttemptsRequest, ListAttemptsResponse,
        ListTasksRequest, ListTasksResponse, RetryTaskRequest, SubmitTaskError, SubmitTaskRequest,
        SubmitTaskResponse, SubmitTasksRequest, SubmitTasksResponse, SubmitTasksResult, Task,
        submit_tasks_result::Outcome, task_service_server::TaskService,
    },
    store::{ListQuery, NewTask, PageToken, Store},
};
use tonic::{Request, Response, Status};

use crate::{config::Fault, error::ApiError, submit::ValidSubmit};

/// ListTasks' page size when the request says 0, and the largest allowed.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The most tasks one SubmitTasks call takes.
pub const MAX_BATCH_TASKS: usize = 1000;

/// What the RPC handlers share.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub nats: Client,
    pub js: jetstream::Context,
    /// Tasks' event histories: cancel appends to them, reads fold their newest event.
    pub history: History,
    /// Which kinds some worker serves, for SubmitTask's warning.
    pub kinds: crate::kinds::KnownKinds,
    pub max_input_bytes: usize,
    pub default_max_attempts: u32,
    pub outbox_lease: Duration,
    pub fault: Option<Fault>,
    /// Group commit of concurrent submits.
    pub inserter: crate::batch::Inserter,
    /// Each tenant's submits per second, if limited.
    pub submit_rate: Option<taskwire::limits::RateLimit>,
    pub outbox_cleaner: crate::batch::OutboxCleaner,
}

/// The TaskService implementation; cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskApi {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    #[tracing::instrument(skip_all, fields(kind = %req.get_ref().kind))]
    async fn submit_task(
        &self,
        req: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let (caller, tenant) = self.submitter(&req, 1)?;
        let valid = self.parse_submit(caller, tenant, req.into_inner())?;
        Ok(Response::new(self.submit(valid).await?))
    }

    #[tracing::instrument(skip_all, fields(tasks = req.get_ref().tasks.len()))]
    async fn submit_tasks(
        &self,
        req: Request<SubmitTasksRequest>,
    ) -> Result<Response<SubmitTasksResponse>, Status> {
        let n = req.get_ref().tasks.len();
        if n == 0 || n > MAX_BATCH_TASKS {
            return Err(ApiError::from(InvalidInput::Malformed {
                field: "tasks",
                reason: format!("a batch holds 1 to {MAX_BATCH_TASKS} tasks, not {n}"),
            })
            .into());
        }
        let (caller, tenant) = self.submitter(&req, n as u32)?;
        // Each task is checked alone: a refused one does not hold back the others.
        let mut valid = Vec::with_capacity(n);
        let refused: Vec<Option<ApiError>> = req
            .into_inner()
            .tasks
            .into_iter()
            .map(
                |t| match self.parse_submit(caller.clone(), tenant.clone(), t) {
                    Ok(v) => {
                        valid.push(v);
                        None
                    }
                    Err(e) => Some(e),
                },
            )
            .collect();
        let mut answers = self.submit_all(valid).await?.into_iter();
        let results = refused
            .into_iter()
            .map(|refused| {
                let answer = match refused {
                    Some(e) => Err(e),
                    None => answers.next().expect("an answer per valid task"),
                };
                let outcome = match answer {
                    Ok(accepted) => Outcome::Accepted(accepted),
                    Err(e) => {
                        let status = Status::from(e);
                        Outcome::Error(SubmitTaskError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    }
                };
                SubmitTasksResult {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(SubmitTasksResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn get_status(&self, req: Request<GetStatusRequest>) -> Result<Response<Task>, Status> {
        let scope = auth::principal(&req)?.scope;
        let id = TaskId::parse(&req.get_ref().task_id).map_err(ApiError::from)?;
        Ok(Response::new(self.status(id, &scope).await?))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn cancel_task(&self, req: Request<CancelTaskRequest>) -> Result<Response<Task>, Status> {
        let scope = auth::principal(&req)?.scope;
        let id = TaskId::parse(&req.get_ref().task_id).map_err(ApiError::from)?;
        Ok(Response::new(self.cancel(id, &scope).await?))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn retry_task(&self, req: Request<RetryTaskRequest>) -> Result<Response<Task>, Status> {
        let scope = auth::principal(&req)?.scope;
        let id = TaskId::parse(&req.get_ref().task_id).map_err(ApiError::from)?;
        Ok(Response::new(self.retry(id, &scope).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn retry_tasks(
        &self,
        req: Request<BulkTasksRequest>,
    ) -> Result<Response<BulkTasksResponse>, Status> {
        let scope = auth::principal(&req)?.scope;
        Ok(Response::new(
            self.bulk(req.into_inner(), &scope, false).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn discard_tasks(
        &self,
        req: Request<BulkTasksRequest>,
    ) -> Result<Response<BulkTasksResponse>, Status> {
        let scope = auth::principal(&req)?.scope;
        Ok(Response::new(
            self.bulk(req.into_inner(), &scope, true).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn list_attempts(
        &self,
        req: Request<ListAttemptsRequest>,
    ) -> Result<Response<ListAttemptsResponse>, Status> {
        let scope = auth::principal(&req)?.scope;
        let id = TaskId::parse(&req.get_ref().task_id).map_err(ApiError::from)?;
        let attempts = self.attempts(id, &scope).await?;
        Ok(Response::new(ListAttemptsResponse { attempts }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_queue_stats(
        &self,
        req: Request<GetQueueStatsRequest>,
    ) -> Result<Response<GetQueueStatsResponse>, Status> {
        // Admin only (the auth layer): the queues span every tenant.
        auth::principal(&req)?;
        let GetQueueStatsRequest { window_minutes } = req.into_inner();
        Ok(Response::new(self.queue_stats(window_minutes).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let scope = auth::principal(&req)?.scope;
        let mut q = parse_list(req.into_inner()).map_err(ApiError::from)?;
        q.tenant = scope.tenant().cloned();
        Ok(Response::new(self.list(&q).await?))
    }
}

impl TaskApi {
    /// Every field of a SubmitTaskRequest checked, before anything is written.
    /// Who submits (the idempotency scope) and for which tenant, once `n` tasks are
    /// taken from the tenant's submit rate.
    fn submitter<T>(&self, req: &Request<T>, n: u32) -> Result<(Caller, Tenant), Status> {
        let principal = auth::principal(req)?;
        let caller = match &principal.scope {
            // Idempotency keys are unique per tenant: a tenant's callers share them,
            // whatever header they send.
            Scope::Tenant(t) => Caller::parse(t.as_str()).map_err(ApiError::from)?,
            Scope::All => caller_of(req)?,
        };
        let tenant = principal.tenant();
        if let Some(limit) = &self.shared.submit_rate {
            limit.take(tenant.as_str(), n).map_err(|retry_after| {
                taskwire::limits::exhausted(
                    "this tenant is over its submit rate; retry later",
                    retry_after,
                )
            })?;
        }
        Ok((caller, tenant))
    }

    fn parse_submit(
        &self,
        caller: Caller,
        tenant: Tenant,
        req: SubmitTaskRequest,
    ) -> Result<ValidSubmit, ApiError> {
        let SubmitTaskRequest {
            kind,
            input,
            idempotency_key,
            max_attempts,
            timeout,
            labels,
            delay,
            run_at,
            parent_id,
            child_failure,
            cancel_policy,
        } = req;
        let kind = TaskKind::parse(&kind)?;
        let (parent_id, child_failure, cancel_policy) =
            taskwire::domain::parse_graph(&parent_id, child_failure, cancel_policy)?;
        let run_at_us =
            taskwire::domain::parse_schedule(delay.as_ref(), run_at.as_ref(), json::now_micros())?;
        let input = json::value_to_json(input.as_ref())
            .map_err(|e| InvalidInput::Malformed {
                field: "input",
                reason: e.to_string(),
            })?
            .to_string();
        if input.len() > self.shared.max_input_bytes {
            return Err(InvalidInput::TooLarge {
                field: "input",
                size: input.len(),
                limit: self.shared.max_input_bytes,
            }
            .into());
        }
        if max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(InvalidInput::Malformed {
                field: "max_attempts",
                reason: format!("must be 0 (the server default) to {MAX_ATTEMPTS_LIMIT}"),
            }
            .into());
        }
        Ok(ValidSubmit(NewTask {
            // Set by each try of the submit.
            id: TaskId::new(),
            created_at_us: 0,
            kind,
            caller,
            tenant,
            idempotency_key: IdempotencyKey::parse(&idempotency_key)?,
            input,
            labels: Labels::parse(&labels)?,
            max_attempts: if max_attempts == 0 {
                self.shared.default_max_attempts
            } else {
                max_attempts
            },
            timeout: parse_timeout(timeout.as_ref())?,
            run_at_us,
            parent_id,
            child_failure,
            cancel_policy,
        }))
    }
}

fn parse_list(req: ListTasksRequest) -> Result<ListQuery, InvalidInput> {
    let ListTasksRequest {
        page_size,
        page_token,
        state,
        kind,
        labels,
        parent_id,
    } = req;
    let page_size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > 0 && n as u32 <= MAX_PAGE_SIZE => n as u32,
        n => {
            return Err(InvalidInput::Malformed {
                field: "page_size",
                reason: format!(
                    "must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}, got {n}"
                ),
            });
        }
    };
    Ok(ListQuery {
        page_size,
        after: if page_token.is_empty() {
            None
        } else {
            Some(PageToken::decode(&page_token)?)
        },
        state: parse_state_filter(state)?,
        kind: if kind.is_empty() {
            None
        } else {
            Some(TaskKind::parse(&kind)?)
        },
        labels: Labels::parse(&labels)?,
        tenant: None,
        parent: taskwire::domain::parse_parent(&parent_id)?,
    })
}

/// The caller named by the `taskwire-caller` header; idempotency keys are scoped to it.
fn caller_of<T>(req: &Request<T>) -> Result<Caller, ApiError> {
    match req.metadata().get(Caller::METADATA_KEY) {
        None => Ok(Caller::default()),
        Some(v) => {
            let s = v.to_str().map_err(|_| InvalidInput::Malformed {
                field: "taskwire-caller",
                reason: "must be printable ASCII".into(),
            })?;
            Ok(Caller::parse(s)?)
        }
    }
}
