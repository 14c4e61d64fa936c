//! Incremental WAL validation: every page header and every record's CRC-32C, over bytes
//! fed in any pieces.
//!
//! [`WalValidator`] is a sans-IO state machine. It is positioned at a segment start
//! ([`WalValidator::new`], [`WalValidator::reset`]) and fed the WAL that follows in pieces
//! of any size ([`WalValidator::feed`]): a message from the server, a file of the
//! archive, a single byte. It checks what PostgreSQL's own reader checks
//! (`XLogReaderValidatePageHeader`, `ValidXLogRecordHeader`, `ValidXLogRecord` in
//! `xlogreader.c`):
//!
//! * every page header as soon as its last byte arrives: the magic (pinned, or learned
//!   from the first page), no unknown info bits, the long header exactly on a segment's
//!   first page with the system identifier, segment size and block size, `xlp_pageaddr`
//!   equal to the page's own position, and a timeline that is not zero, never goes back
//!   from page to page (pages of a new timeline's first segment before the switch point
//!   carry the parent's timeline, so a lower one is normal until the switch) and never
//!   exceeds the timeline being read;
//! * the continuation flags: a record that goes on after a page header needs
//!   `XLP_FIRST_IS_CONTRECORD` there with `xlp_rem_len` equal to what is left of it; a
//!   page where a new record is due must not claim a continuation; a page flagged
//!   `XLP_FIRST_IS_OVERWRITE_CONTRECORD` abandons the record in progress (the server
//!   did the same after a crash cut it);
//! * every record: `xl_tot_len` at least the header and at most 1 GiB, `xl_prev` equal to
//!   the start of the previous record (or, for the first record after a start, before
//!   it), and the CRC-32C. PostgreSQL's CRC covers the record's data after the header
//!   first and then the header up to `xl_crc`, so the data is folded into the CRC as it
//!   arrives and only the 24-byte header is kept: memory is constant whatever the
//!   record's size (a record can be larger than a segment);
//! * `XLOG_SWITCH`: the rest of its segment is padding, not records, and is skipped
//!   unread.
//!
//! The stream may end anywhere, in the middle of a record or of a page header: the next
//! piece continues it. [`WalValidator::checked_end`] says how far the WAL is known good
//! (never inside a record whose CRC has not been checked yet).
//!
//! At a start (a segment start), the first page may begin with the tail of a record
//! that started in the previous segment: that tail is skipped (its header and CRC are
//! not in what is fed), as `pg_waldump` does.
//!
//! PostgreSQL 13 to 18 share the record header; the page magic differs per major
//! (`0xD106` for 13 to `0xD118` for 18), and 19 renumbers one page flag, which is
//! chosen by the magic.

use std::fmt;

use crate::{Lsn, WalSegSize};

/// Size of a record header (`SizeOfXLogRecord`).
pub const RECORD_HEADER_LEN: usize = 24;
/// The largest record accepted (PostgreSQL's limit is 1020 MiB, `XLogRecordMaxSize`).
pub const MAX_RECORD_LEN: u32 = 1 << 30;

const SHORT: usize = crate::page::SHORT_HEADER_LEN;
const LONG: usize = crate::page::LONG_HEADER_LEN;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = crate::page::XLP_LONG_HEADER;
/// `RM_XLOG_ID`.
const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` in the high bits of `xl_info`.
const XLOG_SWITCH: u8 = 0x40;
/// Records with at most this much data are checksummed in one piece with their header.
const SMALL_RECORD: usize = 488;
/// The first magic of PostgreSQL 19, which renumbered `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
const MAGIC_19: u16 = 0xD120;

/// What a WAL stream's format is: learned from its first page or pinned by the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFormat {
    /// `xlp_magic`, which changes with each PostgreSQL major.
    pub magic: u16,
    /// `XLOG_BLCKSZ`, the WAL page size.
    pub blcksz: u32,
}

/// What the validator knows before it sees a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// The segment size (`wal_segment_size`): long headers must carry it.
    pub seg: WalSegSize,
    /// The system identifier long headers must carry; `None` learns it from the first.
    pub system_id: Option<u64>,
    /// The magic and page size every page must have; `None` learns them from the first.
    pub format: Option<WalFormat>,
}

/// What is wrong with the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// `xlp_magic` is not the stream's.
    Magic {
        /// The page's magic.
        found: u16,
        /// The magic of the stream (pinned or learned); `None` if the first page's
        /// magic is not one of PostgreSQL's at all.
        expected: Option<u16>,
    },
    /// `xlp_info` has bits PostgreSQL never sets.
    InfoBits {
        /// The page's `xlp_info`.
        info: u16,
    },
    /// The first page of a segment has no long header.
    NoLongHeader,
    /// A page other than a segment's first claims the long header.
    MisplacedLongHeader,
    /// The long header's system identifier is another cluster's.
    SystemId {
        /// In the page header.
        found: u64,
        /// The archive's (or the stream's first page's).
        expected: u64,
    },
    /// The long header's segment size is not the stream's.
    SegmentSize {
        /// In the page header.
        found: u32,
        /// The stream's.
        expected: u64,
    },
    /// The long header's WAL block size is invalid or not the stream's.
    BlockSize {
        /// In the page header.
        found: u32,
        /// The stream's, if known.
        expected: Option<u32>,
    },
    /// `xlp_pageaddr` is not the page's position: a stale or misplaced page.
    PageAddr {
        /// In the page header.
        found: Lsn,
    },
    /// `xlp_tli` is zero or lower than the previous page's.
    TimelineBackwards {
        /// In the page header.
        found: u32,
        /// The previous page's.
        after: u32,
    },
    /// `xlp_tli` is higher than the timeline being read.
    TimelineAhead {
        /// In the page header.
        found: u32,
        /// The timeline being read.
        timeline: u32,
    },
    /// A record continues on this page, but its header lacks `XLP_FIRST_IS_CONTRECORD`.
    NoContrecordFlag {
        /// The start of the record that continues.
        record: Lsn,
    },
    /// `xlp_rem_len` disagrees with what is left of the record being continued.
    ContrecordLength {
        /// In the page header.
        found: u32,
        /// What is left of the record.
        expected: u64,
    },
    /// A page where a new record is due claims to continue one.
    UnexpectedContrecord,
    /// `xl_tot_len` is shorter than a record header or absurdly long.
    RecordLength {
        /// The record's `xl_tot_len`.
        len: u32,
    },
    /// `xl_prev` does not point to the previous record.
    PrevLink {
        /// The record's `xl_prev`.
        found: Lsn,
        /// The previous record's start, when known (else `xl_prev` must be before the
        /// record).
        expected: Option<Lsn>,
    },
    /// The record's CRC-32C does not match its content.
    Checksum {
        /// The record's `xl_crc`.
        found: u32,
        /// The CRC of its bytes.
        computed: u32,
    },
}

impl Problem {
    /// Whether this is what the zero fill after the end of WAL looks like (a record
    /// length of 0, or a page header of zeros): the end of a `.partial`, not damage, if
    /// every byte from there on is zero.
    pub fn looks_like_end_of_wal(&self) -> bool {
        matches!(
            self,
            Problem::RecordLength { len: 0 } | Problem::Magic { found: 0, .. }
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Magic {
                found,
                expected: Some(e),
            } => write!(f, "page header has magic {found:04X}, expected {e:04X}"),
            Problem::Magic {
                found,
                expected: None,
            } => write!(
                f,
                "page header has magic {found:04X}, which is no PostgreSQL version's"
            ),
            Problem::InfoBits { info } => write!(f, "page header has invalid info bits {info:04X}"),
            Problem::NoLongHeader => write!(f, "first page of the segment has no long header"),
            Problem::MisplacedLongHeader => {
                write!(f, "page header claims a long header off a segment start")
            }
            Problem::SystemId { found, expected } => write!(
                f,
                "page header has system identifier {found}, expected {expected} (WAL of another database system)"
            ),
            Problem::SegmentSize { found, expected } => write!(
                f,
                "page header has segment size {found}, expected {expected}"
            ),
            Problem::BlockSize {
                found,
                expected: Some(e),
            } => write!(f, "page header has WAL block size {found}, expected {e}"),
            Problem::BlockSize {
                found,
                expected: None,
            } => write!(f, "page header has invalid WAL block size {found}"),
            Problem::PageAddr { found } => {
                write!(
                    f,
                    "page header has page address {found} (a stale or misplaced page)"
                )
            }
            Problem::TimelineBackwards { found, after } => write!(
                f,
                "page header has timeline {found} after a page of timeline {after}"
            ),
            Problem::TimelineAhead { found, timeline } => write!(
                f,
                "page header has timeline {found}, beyond the timeline {timeline} being read"
            ),
            Problem::NoContrecordFlag { record } => write!(
                f,
                "the record at {record} continues on this page, but its header has no continuation flag"
            ),
            Problem::ContrecordLength { found, expected } => write!(
                f,
                "page header says {found} bytes of the continued record remain, expected {expected}"
            ),
            Problem::UnexpectedContrecord => write!(
                f,
                "page header claims a continued record where a new record begins"
            ),
            Problem::RecordLength { len } => write!(f, "invalid record length {len}"),
            Problem::PrevLink {
                found,
                expected: Some(e),
            } => write!(f, "record has previous-record link {found}, expected {e}"),
            Problem::PrevLink {
                found,
                expected: None,
            } => write!(
                f,
                "record has previous-record link {found}, not before the record"
            ),
            Problem::Checksum { found, computed } => write!(
                f,
                "record CRC mismatch: the record says {found:08X}, its bytes give {computed:08X}"
            ),
        }
    }
}

/// Invalid WAL: where, what, and how far it was good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalInvalid {
    /// Where the problem is: the page for a page header, the record's start for a record.
    pub at: Lsn,
    /// The end of the last valid record (or the start, if none was complete): nothing
    /// after it is known good.
    pub valid_end: Lsn,
    /// Where the invalid part begins: the start of the invalid record (of the record
    /// running into an invalid page), else the invalid page's start; at or after
    /// `valid_end` by the last valid record's alignment padding, an `XLOG_SWITCH`'s
    /// padding to the segment end, or the page header before the invalid record. What
    /// [`WalValidator::checked_end`] said before the problem was found: WAL up to it was
    /// reported good.
    pub good_end: Lsn,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for WalInvalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.at, self.problem)
    }
}

impl std::error::Error for WalInvalid {}

/// Where the record parser is.
#[derive(Clone, Copy, Debug)]
enum Rec {
    /// At a start: the tail of a record that began before it is skipped. `None` until
    /// the first page header says how long it is.
    Skip { remaining: Option<u64> },
    /// The next record starts at `at` (bytes before it are alignment padding).
    Expect { at: u64 },
    /// Collecting the header of the record at `start`.
    Header {
        start: u64,
        buf: [u8; RECORD_HEADER_LEN],
        have: usize,
    },
    /// Folding the data of the record at `start` into its CRC; `got` bytes of its
    /// `tot` are in.
    Data {
        start: u64,
        tot: u32,
        got: u32,
        crc: u32,
        hdr: [u8; RECORD_HEADER_LEN],
    },
    /// After `XLOG_SWITCH`: padding up to the segment end at `until`.
    Switch { until: u64 },
}

/// The incremental validator (see the module docs).
#[derive(Clone, Debug)]
pub struct WalValidator {
    seg: u64,
    system_id: Option<u64>,
    magic: Option<u16>,
    /// The page size, 0 until the first long header.
    blcksz: u64,
    overwrite_flag: u16,
    all_flags: u16,
    /// The timeline being read: pages may not be of a later one.
    tli: u32,
    /// The position of the next byte.
    pos: u64,
    /// Where reading (re)started.
    start: u64,
    /// The previous page's timeline (0: none yet).
    latest_tli: u32,
    /// The page header being collected.
    hdr: [u8; LONG],
    rec: Rec,
    /// The start of the last valid record.
    prev: Option<u64>,
    /// The end of the last valid record.
    valid_end: u64,
    /// Records validated since creation.
    records: u64,
    failed: Option<WalInvalid>,
    /// A small record's data and header, checksummed in one piece.
    scratch: Vec<u8>,
    /// [`feed_until_record_from`](Self::feed_until_record_from): stop after a record
    /// that starts at or after this position (`u64::MAX`: never).
    halt_from: u64,
    /// A record that starts at or after `halt_from` is complete.
    halted: bool,
}

/// A problem found at a position, before it becomes a [`WalInvalid`].
type Fail = (u64, Problem);

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64le(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
/// The CRC-32C of a record: its data (after the header), then the header up to `xl_crc`.
#[inline]
fn record_crc(data: &[u8], hdr: &[u8; RECORD_HEADER_LEN], scratch: &mut Vec<u8>) -> u32 {
    if data.len() <= SMALL_RECORD {
        // One CRC call instead of two: a call costs more than the copy for small
        // records (most records are small).
        scratch.clear();
        scratch.extend_from_slice(data);
        scratch.extend_from_slice(&hdr[..20]);
        crate::crc::crc32c(scratch)
    } else {
        crate::crc::crc_append(crate::crc::crc32c(data), &hdr[..20])
    }
}

fn maxalign(x: u64) -> u64 {
    x.saturating_add(7) & !7
}

impl WalValidator {
    /// A validator positioned at `start` (a segment start) of timeline `tli`.
    ///
    /// # Panics
    /// If `start` is not a segment start.
    pub fn new(cfg: ValidatorConfig, tli: u32, start: Lsn) -> WalValidator {
        let mut v = WalValidator {
            seg: cfg.seg.bytes(),
            system_id: cfg.system_id,
            magic: None,
            blcksz: 0,
            overwrite_flag: 0,
            all_flags: 0,
            tli,
            pos: 0,
            start: 0,
            latest_tli: 0,
            hdr: [0; LONG],
            rec: Rec::Skip { remaining: None },
            prev: None,
            valid_end: 0,
            records: 0,
            failed: None,
            scratch: Vec::with_capacity(SMALL_RECORD + 20),
            halt_from: u64::MAX,
            halted: false,
        };
        if let Some(f) = cfg.format {
            v.set_magic(f.magic);
            v.blcksz = u64::from(f.blcksz);
        }
        v.reset(tli, start);
        v
    }

    /// Starts over at `start` (a segment start) of timeline `tli`, as after a reconnect
    /// or a timeline switch; the format, system identifier and record count are kept.
    ///
    /// # Panics
    /// If `start` is not a segment start.
    pub fn reset(&mut self, tli: u32, start: Lsn) {
        assert_eq!(
            start.0 % self.seg,
            0,
            "validation starts at a segment start"
        );
        self.tli = tli;
        self.pos = start.0;
        self.start = start.0;
        self.latest_tli = 0;
        self.rec = Rec::Skip { remaining: None };
        self.prev = None;
        self.valid_end = start.0;
        self.failed = None;
    }

    fn set_magic(&mut self, magic: u16) {
        self.magic = Some(magic);
        if magic >= MAGIC_19 {
            (self.overwrite_flag, self.all_flags) = (0x0004, 0x0007);
        } else {
            (self.overwrite_flag, self.all_flags) = (0x0008, 0x000F);
        }
    }

    /// The position of the next byte to feed.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// The timeline being read.
    pub fn timeline(&self) -> u32 {
        self.tli
    }

    /// The magic and page size, once known (pinned, or learned from the first page).
    pub fn format(&self) -> Option<WalFormat> {
        let magic = self.magic?;
        (self.blcksz != 0).then_some(WalFormat {
            magic,
            blcksz: self.blcksz as u32,
        })
    }

    /// The system identifier, once known (given, or learned from the first page).
    pub fn system_id(&self) -> Option<u64> {
        self.system_id
    }

    /// The number of records validated.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The end of the last valid record (the start position before the first).
    pub fn valid_end(&self) -> Lsn {
        Lsn(self.valid_end)
    }

    /// The start of the last valid record, if one was complete since the start.
    pub fn last_record(&self) -> Option<Lsn> {
        self.prev.map(Lsn)
    }

    /// The problem found, if any (the validator then refuses more input).
    pub fn failure(&self) -> Option<&WalInvalid> {
        self.failed.as_ref()
    }

    /// How far the WAL fed is known good: the position, except inside a record whose
    /// CRC is not checked yet (then its start), inside a page header not complete yet
    /// (then the page's start), or in the tail skipped at a start (then the start).
    /// After a failure, where the invalid part begins ([`WalInvalid::good_end`]).
    pub fn checked_end(&self) -> Lsn {
        if let Some(e) = &self.failed {
            return e.good_end;
        }
        match self.rec {
            Rec::Header { start, .. } | Rec::Data { start, .. } => Lsn(start),
            Rec::Skip { .. } => Lsn(self.valid_end),
            Rec::Switch { .. } => Lsn(self.pos),
            Rec::Expect { .. } => {
                let (in_page, hdr_len) = self.page_offset();
                if in_page > 0 && in_page < hdr_len as u64 {
                    Lsn(self.pos - in_page)
                } else {
                    Lsn(self.pos)
                }
            }
        }
    }

    /// The position's offset in its page and the length of that page's header.
    fn page_offset(&self) -> (u64, usize) {
        let in_seg = self.pos % self.seg;
        let in_page = if self.blcksz == 0 {
            in_seg
        } else {
            self.pos % self.blcksz
        };
        let hdr_len = if in_seg == in_page { LONG } else { SHORT };
        (in_page, hdr_len)
    }

    /// Checks the next `data` (continuing at [`position`](Self::position)). On a problem
    /// the error says where and what, and every later call returns it again.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), WalInvalid> {
        self.feed_counted(data).map(|_| ())
    }

    /// Like [`feed`](Self::feed), but stops right after the first record that starts at
    /// or after `from` is complete (and checked): returns how many bytes of `data` were
    /// used then, `None` if all of them were used without completing such a record. The
    /// validator can go on being fed from there. (Used to check a piece of a stream up to
    /// where a checker that started later takes over.)
    pub fn feed_until_record_from(
        &mut self,
        data: &[u8],
        from: Lsn,
    ) -> Result<Option<usize>, WalInvalid> {
        self.halt_from = from.0;
        self.halted = false;
        let r = self.feed_counted(data);
        self.halt_from = u64::MAX;
        let used = r?;
        Ok(std::mem::take(&mut self.halted).then_some(used))
    }

    /// [`feed`](Self::feed), stopping early when `halted`; returns the bytes used.
    fn feed_counted(&mut self, data: &[u8]) -> Result<usize, WalInvalid> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut used = 0;
        while used < data.len() && !self.halted {
            match self.step(&data[used..]) {
                Ok(n) => used += n,
                Err((at, problem)) => {
                    let good_end = match self.rec {
                        Rec::Header { start, .. } | Rec::Data { start, .. } => start.min(at),
                        Rec::Skip { .. } => self.valid_end,
                        Rec::Expect { .. } | Rec::Switch { .. } => at,
                    };
                    let e = WalInvalid {
                        at: Lsn(at),
                        valid_end: Lsn(self.valid_end),
                        good_end: Lsn(good_end.max(self.valid_end)),
                        problem,
                    };
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(used)
    }

    /// Handles a prefix of `data`; returns its length (at least 1).
    fn step(&mut self, data: &[u8]) -> Result<usize, Fail> {
        if let Rec::Switch { until } = self.rec {
            let n = (until - self.pos).min(data.len() as u64) as usize;
            self.pos += n as u64;
            if self.pos == until {
                self.rec = Rec::Expect { at: until };
            }
            return Ok(n);
        }
        let (in_page, hdr_len) = self.page_offset();
        let page_start = self.pos - in_page;
        if (in_page as usize) < hdr_len {
            let from = in_page as usize;
            let n = (hdr_len - from).min(data.len());
            self.hdr[from..from + n].copy_from_slice(&data[..n]);
            self.pos += n as u64;
            if from + n == hdr_len {
                self.check_page(page_start, hdr_len)?;
            }
            return Ok(n);
        }
        let page_end = page_start.saturating_add(self.blcksz);
        let n = (page_end - self.pos).min(data.len() as u64) as usize;
        self.body(&data[..n])
    }

    /// Checks the page header collected in `self.hdr` for the page at `page`, and the
    /// continuation it announces against the record in progress.
    fn check_page(&mut self, page: u64, hdr_len: usize) -> Result<(), Fail> {
        let h = self.hdr;
        let h = &h;
        let magic = u16le(h, 0);
        let info = u16le(h, 2);
        let tli = u32le(h, 4);
        let pageaddr = u64le(h, 8);
        let rem_len = u32le(h, 16);
        match self.magic {
            Some(m) if m != magic => {
                return Err((
                    page,
                    Problem::Magic {
                        found: magic,
                        expected: Some(m),
                    },
                ));
            }
            Some(_) => {}
            None if (0xD000..=0xDFFF).contains(&magic) => self.set_magic(magic),
            None => {
                return Err((
                    page,
                    Problem::Magic {
                        found: magic,
                        expected: None,
                    },
                ));
            }
        }
        if info & !self.all_flags != 0 {
            return Err((page, Problem::InfoBits { info }));
        }
        let first_in_segment = hdr_len == LONG;
        if info & XLP_LONG_HEADER != 0 {
            if !first_in_segment {
                return Err((page, Problem::MisplacedLongHeader));
            }
            let sysid = u64le(h, 24);
            let seg_size = u32le(h, 32);
            let blcksz = u32le(h, 36);
            match self.system_id {
                Some(e) if e != sysid => {
                    return Err((
                        page,
                        Problem::SystemId {
                            found: sysid,
                            expected: e,
                        },
                    ));
                }
                Some(_) => {}
                None => self.system_id = Some(sysid),
            }
            if u64::from(seg_size) != self.seg {
                return Err((
                    page,
                    Problem::SegmentSize {
                        found: seg_size,
                        expected: self.seg,
                    },
                ));
            }
            if self.blcksz == 0 {
                let ok = blcksz.is_power_of_two()
                    && (1024..=65536).contains(&blcksz)
                    && u64::from(blcksz) <= self.seg;
                if !ok {
                    return Err((
                        page,
                        Problem::BlockSize {
                            found: blcksz,
                            expected: None,
                        },
                    ));
                }
                self.blcksz = u64::from(blcksz);
            } else if u64::from(blcksz) != self.blcksz {
                return Err((
                    page,
                    Problem::BlockSize {
                        found: blcksz,
                        expected: Some(self.blcksz as u32),
                    },
                ));
            }
        } else if first_in_segment {
            return Err((page, Problem::NoLongHeader));
        }
        if pageaddr != page {
            return Err((
                page,
                Problem::PageAddr {
                    found: Lsn(pageaddr),
                },
            ));
        }
        if tli == 0 || tli < self.latest_tli {
            return Err((
                page,
                Problem::TimelineBackwards {
                    found: tli,
                    after: self.latest_tli,
                },
            ));
        }
        if tli > self.tli {
            return Err((
                page,
                Problem::TimelineAhead {
                    found: tli,
                    timeline: self.tli,
                },
            ));
        }
        self.latest_tli = tli;

        let cont = info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = info & self.overwrite_flag != 0;
        let body = page + hdr_len as u64;
        self.rec = match self.rec {
            Rec::Header { .. } | Rec::Data { .. } if overwrite => Rec::Expect { at: body },
            Rec::Header {
                start, buf, have, ..
            } => {
                // At a page end at least 8 header bytes are in (records are 8-aligned).
                let tot = u32le(&buf, 0);
                self.check_continuation(start, cont, rem_len, u64::from(tot) - have as u64)?;
                self.rec
            }
            Rec::Data {
                start, tot, got, ..
            } => {
                self.check_continuation(start, cont, rem_len, u64::from(tot - got))?;
                self.rec
            }
            Rec::Skip { .. } if overwrite => Rec::Expect { at: body },
            Rec::Skip { remaining: None } if cont => Rec::Skip {
                remaining: Some(u64::from(rem_len)),
            },
            Rec::Skip { remaining: None } => Rec::Expect { at: body },
            Rec::Skip {
                remaining: Some(left),
            } => {
                self.check_continuation(self.start, cont, rem_len, left)?;
                self.rec
            }
            Rec::Expect { .. } if cont => return Err((page, Problem::UnexpectedContrecord)),
            Rec::Expect { .. } => Rec::Expect { at: body },
            Rec::Switch { .. } => unreachable!("pages after XLOG_SWITCH are not read"),
        };
        Ok(())
    }

    fn check_continuation(
        &self,
        record: u64,
        cont: bool,
        rem_len: u32,
        left: u64,
    ) -> Result<(), Fail> {
        if !cont {
            return Err((
                record,
                Problem::NoContrecordFlag {
                    record: Lsn(record),
                },
            ));
        }
        if rem_len == 0 || u64::from(rem_len) != left {
            return Err((
                record,
                Problem::ContrecordLength {
                    found: rem_len,
                    expected: left,
                },
            ));
        }
        Ok(())
    }

    /// Checks a record header (the first 24 bytes of the record at `start`).
    fn check_record_header(&self, start: u64, hdr: &[u8]) -> Result<u32, Fail> {
        let tot = u32le(hdr, 0);
        if (tot as usize) < RECORD_HEADER_LEN || tot > MAX_RECORD_LEN {
            return Err((start, Problem::RecordLength { len: tot }));
        }
        let prev = u64le(hdr, 8);
        match self.prev {
            Some(p) if p != prev => Err((
                start,
                Problem::PrevLink {
                    found: Lsn(prev),
                    expected: Some(Lsn(p)),
                },
            )),
            None if prev >= start => Err((
                start,
                Problem::PrevLink {
                    found: Lsn(prev),
                    expected: None,
                },
            )),
            _ => Ok(tot),
        }
    }

    /// A record is complete: checks its CRC (`crc` covers its data; the header's first
    /// 20 bytes come last) and moves past it. `self.pos` is already its end.
    fn finish(&mut self, start: u64, hdr: &[u8; RECORD_HEADER_LEN], crc: u32) -> Result<(), Fail> {
        let computed = crate::crc::crc_append(crc, &hdr[..20]);
        self.finish_computed(start, hdr, computed)
    }

    /// [`finish`](Self::finish) with the record's whole CRC (data, then header) computed.
    fn finish_computed(
        &mut self,
        start: u64,
        hdr: &[u8; RECORD_HEADER_LEN],
        computed: u32,
    ) -> Result<(), Fail> {
        let found = u32le(hdr, 20);
        if computed != found {
            return Err((start, Problem::Checksum { found, computed }));
        }
        // Page headers inside a record are not part of its length.
        let end = self.pos;
        self.prev = Some(start);
        self.valid_end = end;
        self.records += 1;
        self.halted |= start >= self.halt_from;
        let (info, rmid) = (hdr[16], hdr[17]);
        self.rec =
            if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH && !end.is_multiple_of(self.seg) {
                Rec::Switch {
                    until: (end - end % self.seg).saturating_add(self.seg),
                }
            } else {
                Rec::Expect { at: maxalign(end) }
            };
        Ok(())
    }

    /// Checks the records that lie wholly in `data`, which begins at the start of a
    /// record (`self.pos`), one after the other, and the alignment padding after each;
    /// returns how many bytes that was. Stops at the first record that is not wholly in
    /// `data` (the caller collects it), and after `XLOG_SWITCH`.
    #[inline]
    fn whole_records(&mut self, data: &[u8]) -> Result<usize, Fail> {
        let mut off = 0;
        loop {
            let rest = &data[off..];
            let Some(hdr) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
                return Ok(off);
            };
            let start = self.pos;
            let len = self.check_record_header(start, hdr)? as usize;
            let Some(record) = rest.get(..len) else {
                return Ok(off);
            };
            self.pos += len as u64;
            off += len;
            let crc = record_crc(&record[RECORD_HEADER_LEN..], hdr, &mut self.scratch);
            self.finish_computed(start, hdr, crc)?;
            let Rec::Expect { at } = self.rec else {
                return Ok(off);
            };
            if self.halted {
                return Ok(off);
            }
            let pad = (at - self.pos) as usize;
            if data.len() - off < pad {
                return Ok(off);
            }
            self.pos = at;
            off += pad;
        }
    }

    /// Handles `data`, which lies within the body of the current page; returns how much
    /// of it was used (all, unless a record completed that halts the validator).
    fn body(&mut self, data: &[u8]) -> Result<usize, Fail> {
        let mut i = 0;
        while i < data.len() && !self.halted {
            let rest = &data[i..];
            match &mut self.rec {
                Rec::Skip { remaining } => {
                    let left = remaining.expect("set by the first page header");
                    let n = left.min(rest.len() as u64);
                    self.pos += n;
                    i += n as usize;
                    self.rec = if n == left {
                        Rec::Expect {
                            at: maxalign(self.pos),
                        }
                    } else {
                        Rec::Skip {
                            remaining: Some(left - n),
                        }
                    };
                }
                Rec::Expect { at } if self.pos < *at => {
                    let n = (*at - self.pos).min(rest.len() as u64);
                    self.pos += n;
                    i += n as usize;
                }
                Rec::Expect { .. } => {
                    let start = self.pos;
                    if rest.len() < RECORD_HEADER_LEN {
                        // Split by the page end or the end of the data.
                        if rest.len() >= 4 {
                            let tot = u32le(rest, 0);
                            if (tot as usize) < RECORD_HEADER_LEN || tot > MAX_RECORD_LEN {
                                return Err((start, Problem::RecordLength { len: tot }));
                            }
                        }
                        let mut buf = [0u8; RECORD_HEADER_LEN];
                        buf[..rest.len()].copy_from_slice(rest);
                        self.rec = Rec::Header {
                            start,
                            buf,
                            have: rest.len(),
                        };
                        self.pos += rest.len() as u64;
                        i = data.len();
                        continue;
                    }
                    // The common case: whole records, one after the other.
                    let n = self.whole_records(rest)?;
                    if n > 0 {
                        i += n;
                        continue;
                    }
                    let mut hdr = [0u8; RECORD_HEADER_LEN];
                    hdr.copy_from_slice(&rest[..RECORD_HEADER_LEN]);
                    let tot = self.check_record_header(start, &hdr)?;
                    // The record goes on after `rest`: fold what is here into its CRC.
                    let crc = crate::crc::crc32c(&rest[RECORD_HEADER_LEN..]);
                    self.rec = Rec::Data {
                        start,
                        tot,
                        got: rest.len() as u32,
                        crc,
                        hdr,
                    };
                    self.pos += rest.len() as u64;
                    i = data.len();
                }
                Rec::Header { start, buf, have } => {
                    let start = *start;
                    let from = *have;
                    let n = (RECORD_HEADER_LEN - from).min(rest.len());
                    buf[from..from + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    let (buf, have) = (*buf, *have);
                    self.pos += n as u64;
                    i += n;
                    if have < 4 {
                        continue;
                    }
                    if have < RECORD_HEADER_LEN {
                        let tot = u32le(&buf, 0);
                        if (tot as usize) < RECORD_HEADER_LEN || tot > MAX_RECORD_LEN {
                            return Err((start, Problem::RecordLength { len: tot }));
                        }
                        continue;
                    }
                    let tot = self.check_record_header(start, &buf)?;
                    if tot as usize == RECORD_HEADER_LEN {
                        self.finish(start, &buf, 0)?;
                    } else {
                        self.rec = Rec::Data {
                            start,
                            tot,
                            got: RECORD_HEADER_LEN as u32,
                            crc: 0,
                            hdr: buf,
                        };
                    }
                }
                Rec::Data {
                    start,
                    tot,
                    got,
                    crc,
                    hdr,
                } => {
                    let n = ((*tot - *got) as usize).min(rest.len());
                    *crc = crate::crc::crc_append(*crc, &rest[..n]);
                    *got += n as u32;
                    self.pos += n as u64;
                    i += n;
                    if *got == *tot {
                        let (start, crc, hdr) = (*start, *crc, *hdr);
                        self.finish(start, &hdr, crc)?;
                    }
                }
                Rec::Switch { until } => {
                    let until = *until;
                    let n = (until - self.pos).min(rest.len() as u64);
                    self.pos += n;
                    i += n as usize;
                    if self.pos == until {
                        self.rec = Rec::Expect { at: until };
                    }
                }
            }
        }
        Ok(i)
    }
}

/// Fuzzing entry point: `data[0]` picks the message size (1 to 256 bytes, or all at once),
/// `data[1]` bit 0 whether the format and system identifier are pinned (PostgreSQL 18's,
/// system 7), the rest is WAL from 0/300000 of timeline 2 (1 MiB segments). Never panics on
/// its own account; it panics only if an invariant breaks: the known-good end never passes
/// the position nor falls behind the last valid record, a failure is sticky and leaves the
/// known-good end at the last valid record, and the verdict does not depend on how the WAL
/// is split into messages.
pub fn fuzz_validate(data: &[u8]) {
    let [size, flags, wal @ ..] = data else {
        return;
    };
    let cfg = ValidatorConfig {
        seg: WalSegSize::new(1 << 20).expect("valid"),
        system_id: (flags & 1 != 0).then_some(7),
        format: (flags & 1 != 0).then_some(WalFormat {
            magic: 0xD118,
            blcksz: 8192,
        }),
    };
    let start = Lsn(3 << 20);
    let mut whole = WalValidator::new(cfg, 2, start);
    let whole_result = whole.feed(wal);
    let mut v = WalValidator::new(cfg, 2, start);
    let piece = if *size == 255 {
        wal.len().max(1)
    } else {
        usize::from(*size) + 1
    };
    let mut result = Ok(());
    for chunk in wal.chunks(piece) {
        result = v.feed(chunk);
        assert!(
            v.checked_end() <= v.position(),
            "checked end past the position"
        );
        assert!(
            v.valid_end() <= v.checked_end(),
            "checked end before the valid end"
        );
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, whole_result, "the verdict depends on the split");
    assert_eq!(v.checked_end(), whole.checked_end());
    assert_eq!(v.records(), whole.records());
    if let Err(e) = result {
        assert_eq!(v.feed(&[0]), Err(e.clone()), "a failure is sticky");
        assert_eq!(v.checked_end(), e.good_end);
        assert!(e.valid_end <= e.good_end && e.good_end <= e.at, "{e:?}");
        let _ = e.to_string();
    }
}

#[cfg(test)]
mod tests;
