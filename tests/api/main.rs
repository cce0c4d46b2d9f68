//! The HTTP suite: each test starts the real server on a free port, on its own database
//! (a temp SQLite file, or a fresh PostgreSQL database with `TEST_DATABASE=postgres`), and talks
//! HTTP to it.

// Table-driven tests spell their case tuples out where they are read.
#![allow(clippy::type_complexity)]

mod abuse;
mod admin;
mod browser;
mod budget;
mod cli;
mod commit_outcome;
mod concurrency;
mod consent;
mod consent_forwarding;
mod consent_matrix;
mod consent_order;
mod console;
mod db_faults;
mod db_file;
mod delivery;
mod deploy;
mod email_sync;
mod erased_bytes;
mod erasure;
mod exactly_once;
mod form;
mod group_commit;
mod health;
mod helpers;
mod idempotency;
mod imports;
mod metrics;
mod openapi;
mod outbox;
mod overload;
mod preflight;
mod processes;
mod properties;
mod providers;
mod rate_limit;
mod registrations;
mod retention;
mod send_event;
mod traces;
