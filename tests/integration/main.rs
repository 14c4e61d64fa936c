//! walsink's integration tests: one test binary (`cargo test -p walsink --test integration`) that runs the
//! real `walsink` binary against real PostgreSQL clusters.
//!
//! `harness` holds the shared machinery (clusters, the walsink process handle, archive assertions); every
//! other module is a set of scenarios named for behaviour. Add a scenario module by creating
//! `tests/integration/<name>.rs` and a `mod <name>;` line below, with a one-line comment on what belongs in it.

mod harness;

// Checks that the harness itself works (clusters, SQL, WAL switches, standby, promotion). Runs on every CI.
mod harness_selftest;

// Scenario modules (added by their owners):
// pg_receivewal's own TAP scenarios (020_pg_receivewal.pl), run with walsink.
mod tap;
// Barman (from PyPI, its own OS user) driving walsink as its pg_receivewal: check, cron, backup, recover.
mod barman;
// Archive integrity: byte-identical segments, pg_receivewal interchange, crashes, signals, partial recovery, locking.
mod integrity;
// Timeline switches and promotions walsink streams through.
mod timeline;
// Connection options, authentication, and every error path's exit code and message.
mod errors;
// Feedback: honest flush positions, synchronous standby.
mod feedback;
// Faults injected by a TCP proxy in front of a real server: stalls, cuts at random byte offsets.
mod faults;
// Following the primary: several hosts and target_session_attrs, slots on a promoted server, forks past the archive's end.
mod failover;
// Protocol faults no real server produces, played by a scripted fake server (harness/fake.rs).
mod protocol_faults;
// WAL validation at ingest: real WAL split at every message size; invalid WAL from a fake server (exit 21).
mod validation;
// walsink verify: real archives valid, corrupted copies refused naming the problem (exit 20).
mod verify;
// No silent gaps (exit 14 naming the missing range, --allow-gap and its record) and disk-full pauses.
mod gaps;
// walsink's protocol client against a real server byte by byte; the recordings are fuzz seeds.
mod fuzz_seeds;
// Hostile files in the archive directory: planted links, FIFOs, endless metadata, a lock file deleted under a running walsink.
mod hostile_files;
// A server with translated messages (lc_messages = de_DE.UTF-8): the same exit codes and hints as an English one.
mod translated;
// A failed start (slot missing, another system, bad password, no server) leaves the archive directory as it was.
mod failed_start;
// Hostile servers (malformed and endless replies, floods, silence) and the connection's security options.
mod security;
// `walsink run`: many sources in one daemon (isolation, SIGHUP reload, per-source logs, config errors).
mod daemon;
// TLS against servers with ssl = on and certificates made by the test: sslmode, client certificates, channel binding, direct.
mod tls;
// walsink restore as restore_command: zero data loss after losing the primary, PITR, exit codes.
mod restore;
// walsink status: per-timeline contents of an archive, the .partial's fill, the lag behind a live server.
mod status;
// Running as a service: metrics and health (--metrics-listen, promtool, a real Prometheus), systemd notify, the units.
mod service;
// Log formats: JSON lines (receive and run), no timestamps under journald, pg_receivewal's form kept.
mod logs;
// Running as a service under faults from the proxy: lag and reconnects in the metrics, /health and the daemon's watchdog for a silent server.
mod service_faults;
