//! taskwire: long-running tasks with live progress, over gRPC and NATS JetStream.
//!
//! This crate is the shared core that every taskwire process links: the generated
//! contract, the domain types that parse input at the edge, storage, the NATS
//! protocol, configuration, telemetry and shutdown. The processes themselves live in
//! `services/` (api, worker, recorder, watch) and `clients/`.
//!
//! # Layout
//! - [`admin`]: the admin listener: metrics, liveness, readiness.
//! - [`backoff`]: the one retry schedule (exponential, jittered).
//! - [`codec`]: the protobuf codec of the generated stubs (small per-call buffers).
//! - [`pb`]: the generated protobuf types and gRPC stubs, and the descriptor set that
//!   server reflection serves. The one door to generated code.
//! - [`domain`]: `TaskId`, `TaskKind`, labels, states and limits; everything a request
//!   carries is parsed here before any side effect.
//! - [`json`]: `google.protobuf.Value` <-> JSON, and time conversions.
//! - [`limits`]: per-tenant rates and per-key stream quotas (RESOURCE_EXHAUSTED).
//! - [`store`]: the database (SQLite or PostgreSQL through one sqlx interface):
//!   tasks, labels and the transactional outbox.
//! - [`nats`]: the wire protocol: subjects, headers, streams, consumers, and the one
//!   conditional append to a task's history.
//! - [`config`]: the command-line and `TASKWIRE_*` settings the processes share.
//! - [`serve`]: serving gRPC and grpc-web the same way in every process.
//! - [`rest`]: REST/JSON and Server-Sent Events, transcoded onto the gRPC services
//!   from the proto's `google.api.http` routes; the OpenAPI document.
//! - [`auth`], [`tls`]: who is calling and what they may see; TLS with certificates
//!   reloaded from files.
//! - [`service`]: what every service binary shares: its error type and its `main`.
//! - [`telemetry`], [`shutdown`]: logging (errors with their causes) and the stop
//!   protocol.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backoff;
pub mod codec;
pub mod config;
pub mod domain;
pub mod json;
pub mod limits;
pub mod nats;
pub mod pb;
pub mod rest;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
