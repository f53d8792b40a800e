//! Frames of the disk buffer: `len: u32 LE`, `crc: u32 LE` (CRC-32 of the length bytes and
//! the payload), then `len` bytes of payload, one [`Record`] encoded (format version, time,
//! origin, level, message, PostgreSQL fields, topic, parse error, extra fields).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use crate::record::{Level, Origin, PgFields, Record};

/// Frame header: length and checksum.
pub(crate) const HEADER: usize = 8;
/// No encoded record is shorter than this: a zero-filled tail is not a run of empty frames.
pub(super) const MIN_PAYLOAD: u32 = 16;
const FORMAT_VERSION: u8 = 1;

/// CRC-32 of `parts` one after the other.
pub(super) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = flate2::Crc::new();
    for p in parts {
        crc.update(p);
    }
    crc.sum()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

const LEVELS: [Level; 8] = [
    Level::Emerg,
    Level::Alert,
    Level::Crit,
    Level::Err,
    Level::Warning,
    Level::Notice,
    Level::Info,
    Level::Debug,
];

const HAS_PG: u8 = 1;
const HAS_TOPIC: u8 = 2;
const HAS_PARSE_ERROR: u8 = 4;
const HAS_DURATION: u8 = 8;

/// Appends one frame holding `r` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, r: &Record) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&r.time.as_second().to_le_bytes());
    out.extend_from_slice(&r.time.subsec_nanosecond().to_le_bytes());
    put_str(out, &r.origin.job);
    put_str(out, &r.origin.ins);
    put_str(out, &r.origin.ip);
    put_str(out, &r.origin.cls);
    out.push(r.level.map_or(0, |l| {
        LEVELS
            .iter()
            .position(|x| *x == l)
            .map_or(0, |i| i as u8 + 1)
    }));
    let pg = r.pg.as_deref();
    let mut flags = 0;
    if pg.is_some() {
        flags |= HAS_PG;
    }
    if r.topic.is_some() {
        flags |= HAS_TOPIC;
    }
    if r.parse_error.is_some() {
        flags |= HAS_PARSE_ERROR;
    }
    if pg.is_some_and(|p| p.duration.is_some()) {
        flags |= HAS_DURATION;
    }
    out.push(flags);
    put_str(out, &r.message);
    if let Some(p) = pg {
        for s in [
            &p.lv,
            &p.code,
            &p.user,
            &p.db,
            &p.app,
            &p.query,
            &p.pid,
            &p.backend_type,
        ] {
            put_str(out, s);
        }
        if let Some(d) = p.duration {
            out.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    if let Some(t) = &r.topic {
        put_str(out, t);
    }
    if let Some(e) = &r.parse_error {
        put_str(out, e);
    }
    out.extend_from_slice(&(r.extra.len() as u32).to_le_bytes());
    for (k, v) in &r.extra {
        put_str(out, k);
        put_str(out, v);
    }
    let len = (out.len() - start - HEADER) as u32;
    let len_bytes = len.to_le_bytes();
    let crc = crc32(&[&len_bytes, &out[start + HEADER..]]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Extra-field names are `&'static str` in a [`Record`]: the few names the parsers use are
/// interned once (they come from code, so the set is small and fixed).
fn intern(key: &str) -> &'static str {
    static KEYS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    for k in ["pid", "db", "user"] {
        if k == key {
            return k;
        }
    }
    let mut set = agent_kit::sync::lock(KEYS.get_or_init(Mutex::default));
    if let Some(k) = set.get(key) {
        return k;
    }
    let leaked: &'static str = Box::leak(key.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("payload too short")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("invalid UTF-8: {e}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.str().map(str::to_owned)
    }
}

/// Decodes records, sharing one [`Origin`] among consecutive records of the same source.
#[derive(Debug, Default)]
pub(crate) struct RecordDecoder {
    origin: Option<Arc<Origin>>,
}

impl RecordDecoder {
    /// Decodes a frame's payload.
    pub(crate) fn decode(&mut self, payload: &[u8]) -> Result<Record, String> {
        let mut c = Cursor {
            buf: payload,
            pos: 0,
        };
        let version = c.u8()?;
        if version != FORMAT_VERSION {
            return Err(format!("unknown record version {version}"));
        }
        let secs = c.u64()? as i64;
        let nanos = c.u32()? as i32;
        let time =
            jiff::Timestamp::new(secs, nanos).map_err(|e| format!("invalid timestamp: {e}"))?;
        let (job, ins, ip, cls) = (c.str()?, c.str()?, c.str()?, c.str()?);
        let origin = match &self.origin {
            Some(o) if o.job == job && o.ins == ins && o.ip == ip && o.cls == cls => o.clone(),
            _ => {
                let o = Arc::new(Origin {
                    job: job.to_owned(),
                    ins: ins.to_owned(),
                    ip: ip.to_owned(),
                    cls: cls.to_owned(),
                });
                self.origin = Some(o.clone());
                o
            }
        };
        let level = match c.u8()? {
            0 => None,
            n => Some(
                *LEVELS
                    .get(usize::from(n) - 1)
                    .ok_or_else(|| format!("invalid level {n}"))?,
            ),
        };
        let flags = c.u8()?;
        let message = c.string()?;
        let pg = if flags & HAS_PG != 0 {
            let mut p = PgFields {
                lv: c.string()?,
                code: c.string()?,
                user: c.string()?,
                db: c.string()?,
                app: c.string()?,
                query: c.string()?,
                pid: c.string()?,
                backend_type: c.string()?,
                duration: None,
            };
            if flags & HAS_DURATION != 0 {
                p.duration = Some(f64::from_bits(c.u64()?));
            }
            Some(Box::new(p))
        } else {
            None
        };
        let topic = if flags & HAS_TOPIC != 0 {
            Some(c.string()?)
        } else {
            None
        };
        let parse_error = if flags & HAS_PARSE_ERROR != 0 {
            Some(c.string()?)
        } else {
            None
        };
        let n = c.u32()? as usize;
        let mut extra = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let k = intern(c.str()?);
            extra.push((k, c.string()?));
        }
        if c.pos != payload.len() {
            return Err("trailing bytes after the record".into());
        }
        Ok(Record {
            time,
            origin,
            level,
            message,
            pg,
            topic,
            extra,
            parse_error,
        })
    }
}
