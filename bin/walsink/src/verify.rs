//! `walsink verify -D DIR [--from LSN] [--to LSN] [--json] [--jobs N]`: checks the archive (file
//! names and sizes, continuity per timeline along the history files, recorded gaps, every page
//! header and record CRC; `walsink_archive::verify`), reading each WAL file through a memory map,
//! segments on one thread per core (`--jobs`). A progress bar on a terminal; `--json` prints the
//! report as JSON on stdout. Exit 0 when the archive is valid from its first to its last record,
//! 20 when it has problems, 17 when it cannot be read.

use std::fs::File;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;
use walsink_archive::verify::{Finding, Mapped, Verifier, VerifyOptions, VerifyReport};
use walsink_wal::Lsn;

use crate::exit;

/// `walsink verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The archive directory.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,

    /// Check only the segments that end after this LSN (X/X).
    #[arg(long = "from", value_name = "LSN", value_parser = crate::cli::parse_lsn)]
    pub from: Option<Lsn>,

    /// Check only the segments that begin before this LSN (X/X).
    #[arg(long = "to", value_name = "LSN", value_parser = crate::cli::parse_lsn)]
    pub to: Option<Lsn>,

    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long = "json")]
    pub json: bool,

    /// Check segments on this many threads [default: one per CPU]. The report is the same
    /// with any number.
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,
}

/// The content of a WAL file, memory-mapped (read only).
fn map(file: &File) -> std::io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Box::new(Vec::new()));
    }
    // SAFETY: the map is read only and private to this process. walsink never truncates a
    // WAL file, but a running walsink may write into the newest `.partial` while it is
    // mapped: the bytes read may then be old or new (the check reports what it saw), and a
    // file truncated by another program would raise SIGBUS, as for any reader of a file
    // mapped into memory. `walsink verify` is meant for archives walsink owns.
    // Not populated: a worker reads only the start of the file after its segment (the end of
    // the record that crosses into it), and faulting pages in as they are read costs about
    // what populating does (BENCHMARKS.md).
    let m = unsafe { memmap2::MmapOptions::new().map(file)? };
    let _ = m.advise(memmap2::Advice::Sequential);
    Ok(Box::new(m))
}

/// Runs `walsink verify`; returns the exit code.
pub fn main(args: VerifyArgs) -> u8 {
    let opts = VerifyOptions {
        from: args.from,
        to: args.to,
    };
    let verifier = match Verifier::open(&args.directory, opts) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("walsink verify: error: {e}");
            return exit::ARCHIVE_ERROR;
        }
    };
    let total = verifier.total_bytes();
    let bar = if !args.json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} checking WAL {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |j| j as usize,
    );
    let started = Instant::now();
    let report = if jobs == 1 {
        let mut map = map;
        verifier.run(&mut map, &mut |n| bar.inc(n))
    } else {
        verifier.run_parallel(jobs, &map, &|n| bar.inc(n))
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", to_json(&report, secs));
    } else {
        print_text(&args.directory, &report, secs);
    }
    if report.is_valid() {
        exit::OK
    } else {
        exit::VERIFY_PROBLEMS
    }
}

fn finding_json(f: &Finding) -> serde_json::Value {
    json!({
        "file": f.file,
        "timeline": f.timeline,
        "lsn": f.lsn.map(|l| l.to_string()),
        "problem": f.what,
    })
}

fn to_json(r: &VerifyReport, secs: f64) -> serde_json::Value {
    json!({
        "valid": r.is_valid(),
        "system_identifier": r.system_identifier.map(|s| s.to_string()),
        "wal_segment_size": r.seg.map(|s| s.bytes()),
        "timelines": r.timelines.iter().map(|t| json!({
            "timeline": t.tli,
            "first": t.first.to_string(),
            "end": t.end.to_string(),
            "files": t.files,
            "records": t.records,
        })).collect::<Vec<_>>(),
        "recorded_gaps": r.gaps.iter().map(|g| json!({
            "from": g.from.to_string(),
            "to": g.to.to_string(),
            "accepted_at": g.accepted_at,
            "reason": g.reason,
        })).collect::<Vec<_>>(),
        "problems": r.problems.iter().map(finding_json).collect::<Vec<_>>(),
        "notes": r.notes.iter().map(finding_json).collect::<Vec<_>>(),
        "files": r.files,
        "bytes": r.bytes,
        "records": r.records,
        "seconds": secs,
    })
}

fn print_text(dir: &std::path::Path, r: &VerifyReport, secs: f64) {
    let mib = r.bytes as f64 / f64::from(1u32 << 20);
    println!(
        "archive \"{}\": {} WAL files, {:.1} MiB, {} records checked in {:.1} s ({:.0} MiB/s)",
        dir.display(),
        r.files,
        mib,
        r.records,
        secs,
        if secs > 0.0 { mib / secs } else { 0.0 }
    );
    if let Some(id) = r.system_identifier {
        println!("database system {id}");
    }
    for t in &r.timelines {
        println!(
            "timeline {}: {} to {} ({} files, {} records)",
            t.tli, t.first, t.end, t.files, t.records
        );
    }
    for g in &r.gaps {
        println!("recorded gap: {g}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    match (r.is_valid(), r.timelines.is_empty()) {
        (true, true) => println!("OK: the archive holds no WAL"),
        (true, false) => println!("OK: the archive is valid from its first to its last record"),
        (false, _) => println!(
            "FAILED: {} problem{} found",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        ),
    }
}
