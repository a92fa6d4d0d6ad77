//! Re-framing PostgreSQL's binary `COPY` format on the fly, from the local
//! `COPY (DELETE … RETURNING id, meter_id, point, recorded_at, value, unit)
//! TO STDOUT` into the remote `COPY meter_readings (meter_id, point,
//! recorded_at, value, unit, site_id) FROM STDIN`: the local id is dropped
//! (its highest value is kept, for the next claim's keyset) and the site id
//! is appended to every row. Field values are copied as bytes, never
//! decoded, so a row costs a few slice copies.
//!
//! Guarantees:
//! - input is parsed with checked lengths: a malformed stream (wrong
//!   signature, field count or id width, a truncated row) is an error, never
//!   a panic or a silently skipped row;
//! - one remote stream may be fed by several local streams (one per claim):
//!   each local stream's header and trailer are consumed, the remote stream
//!   gets one header ([`Reframer::header`]) and one trailer
//!   ([`Reframer::trailer`]);
//! - memory is one incomplete row of input at most, beyond what the caller
//!   keeps of the output.

use bytes::{Buf, BufMut, BytesMut};

/// The binary COPY signature (11 bytes) that starts every stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Fields of a local row: id, meter_id, point, recorded_at, value, unit.
const LOCAL_FIELDS: i16 = 6;
/// Fields of a remote row: meter_id, point, recorded_at, value, unit, site_id.
const REMOTE_FIELDS: i16 = 6;

/// A local stream that does not follow the binary COPY format (a bug in
/// metersync or the server, never bad readings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the local COPY stream is malformed: {0}")]
pub(super) struct FrameError(&'static str);

/// Where the parser is in the current local stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the header.
    Header,
    /// Between rows.
    Rows,
    /// After the trailer: nothing may follow.
    Ended,
}

/// The re-framer of one remote stream (see the module docs).
#[derive(Debug)]
pub(super) struct Reframer {
    /// The site id field as written remotely (length and bytes, or NULL).
    site: Vec<u8>,
    /// Unparsed input of the current local stream.
    pending: BytesMut,
    state: State,
    /// Rows written to the remote stream.
    rows: u64,
    /// Rows of the current local stream.
    stream_rows: u64,
    /// The highest local id seen.
    max_id: Option<i64>,
}

impl Reframer {
    /// A re-framer tagging every row with `site_id` (NULL when `None`).
    pub fn new(site_id: Option<&str>) -> Self {
        let mut site = Vec::new();
        match site_id {
            Some(s) => {
                site.put_i32(i32::try_from(s.len()).unwrap_or(i32::MAX));
                site.extend_from_slice(s.as_bytes());
            }
            None => site.put_i32(-1),
        }
        Reframer {
            site,
            pending: BytesMut::new(),
            state: State::Ended,
            rows: 0,
            stream_rows: 0,
            max_id: None,
        }
    }

    /// Writes the remote stream's header (signature, no flags, no extension).
    pub fn header(out: &mut BytesMut) {
        out.put_slice(SIGNATURE);
        out.put_i32(0);
        out.put_i32(0);
    }

    /// Writes the remote stream's trailer.
    pub fn trailer(out: &mut BytesMut) {
        out.put_i16(-1);
    }

    /// Starts a new local stream (one claim).
    ///
    /// Fails when the previous local stream did not end with its trailer.
    pub fn begin_stream(&mut self) -> Result<(), FrameError> {
        if self.state != State::Ended || !self.pending.is_empty() {
            return Err(FrameError("a claim's stream ended before its trailer"));
        }
        self.state = State::Header;
        self.stream_rows = 0;
        Ok(())
    }

    /// Checks that the current local stream ended with its trailer; returns
    /// its row count.
    pub fn end_stream(&self) -> Result<u64, FrameError> {
        if self.state != State::Ended || !self.pending.is_empty() {
            return Err(FrameError("the stream ended in the middle of a row"));
        }
        Ok(self.stream_rows)
    }

    /// Rows written to the remote stream so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The highest local id seen so far.
    pub fn max_id(&self) -> Option<i64> {
        self.max_id
    }

    /// Parses `input` (any split of the local stream) and appends every
    /// complete row, re-framed, to `out`.
    ///
    /// Fails when the input is not binary COPY of the local row shape.
    pub fn push(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
        self.pending.extend_from_slice(input);
        loop {
            match self.state {
                State::Header => {
                    // Signature, flags, extension length, extension.
                    if self.pending.len() < 19 {
                        return Ok(());
                    }
                    if &self.pending[..11] != SIGNATURE {
                        return Err(FrameError("no binary COPY signature"));
                    }
                    let ext = be_i32(&self.pending[15..19]);
                    let ext = usize::try_from(ext)
                        .map_err(|_| FrameError("negative header extension length"))?;
                    if self.pending.len() < 19 + ext {
                        return Ok(());
                    }
                    self.pending.advance(19 + ext);
                    self.state = State::Rows;
                }
                State::Rows => {
                    let Some(len) = self.row_len()? else {
                        return Ok(());
                    };
                    if len == 2 {
                        // The trailer (field count -1).
                        self.pending.advance(2);
                        self.state = State::Ended;
                        continue;
                    }
                    let row = self.pending.split_to(len);
                    // Field 0 is the id: 4 bytes of length (8), 8 of value.
                    let id = i64::from_be_bytes(
                        row[6..14]
                            .try_into()
                            .map_err(|_| FrameError("short id field"))?,
                    );
                    self.max_id = Some(self.max_id.map_or(id, |m| m.max(id)));
                    out.put_i16(REMOTE_FIELDS);
                    out.put_slice(&row[14..]);
                    out.put_slice(&self.site);
                    self.rows += 1;
                    self.stream_rows += 1;
                }
                State::Ended => {
                    if self.pending.is_empty() {
                        return Ok(());
                    }
                    return Err(FrameError("data after the trailer"));
                }
            }
        }
    }

    /// The length of the complete row (or trailer) at the start of
    /// `pending`, or `None` when more input is needed.
    fn row_len(&self) -> Result<Option<usize>, FrameError> {
        let p = &self.pending;
        if p.len() < 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([p[0], p[1]]);
        if fields == -1 {
            return Ok(Some(2));
        }
        if fields != LOCAL_FIELDS {
            return Err(FrameError("unexpected field count"));
        }
        let mut at = 2usize;
        for field in 0..LOCAL_FIELDS {
            if p.len() < at + 4 {
                return Ok(None);
            }
            let len = be_i32(&p[at..at + 4]);
            at += 4;
            if field == 0 && len != 8 {
                return Err(FrameError("the id is not an 8-byte integer"));
            }
            if len >= 0 {
                at += usize::try_from(len).map_err(|_| FrameError("field length"))?;
            } else if len != -1 {
                return Err(FrameError("negative field length"));
            }
        }
        Ok((p.len() >= at).then_some(at))
    }
}

fn be_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local row: id, meter, point, micros, value, unit.
    type Row = (i64, i64, &'static str, i64, f64, Option<&'static str>);

    /// A local binary COPY stream of `rows`.
    fn local(rows: &[Row]) -> Vec<u8> {
        let mut b = BytesMut::new();
        Reframer::header(&mut b);
        for (id, m, p, t, v, u) in rows {
            b.put_i16(6);
            b.put_i32(8);
            b.put_i64(*id);
            b.put_i32(8);
            b.put_i64(*m);
            b.put_i32(p.len() as i32);
            b.put_slice(p.as_bytes());
            b.put_i32(8);
            b.put_i64(*t);
            b.put_i32(8);
            b.put_f64(*v);
            match u {
                Some(u) => {
                    b.put_i32(u.len() as i32);
                    b.put_slice(u.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        Reframer::trailer(&mut b);
        b.to_vec()
    }

    const ROWS: [Row; 3] = [
        (7, 1, "energy_kwh", 10, 1.5, Some("kWh")),
        (9, 2, "power", 20, -2.0, None),
        (8, 3, "p", 30, 0.0, Some("")),
    ];

    /// The remote rows expected for ROWS with site `s`.
    fn remote(s: Option<&str>) -> Vec<u8> {
        let mut b = BytesMut::new();
        for (_, m, p, t, v, u) in ROWS {
            b.put_i16(6);
            b.put_i32(8);
            b.put_i64(m);
            b.put_i32(p.len() as i32);
            b.put_slice(p.as_bytes());
            b.put_i32(8);
            b.put_i64(t);
            b.put_i32(8);
            b.put_f64(v);
            match u {
                Some(u) => {
                    b.put_i32(u.len() as i32);
                    b.put_slice(u.as_bytes());
                }
                None => b.put_i32(-1),
            }
            match s {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b.to_vec()
    }

    #[test]
    fn rows_lose_the_id_and_gain_the_site_whatever_the_split() {
        let input = local(&ROWS);
        for site in [Some("site-a"), None] {
            // Every split point, and byte by byte.
            for cut in 0..=input.len() {
                let mut f = Reframer::new(site);
                let mut out = BytesMut::new();
                f.begin_stream().unwrap();
                f.push(&input[..cut], &mut out).unwrap();
                f.push(&input[cut..], &mut out).unwrap();
                assert_eq!(f.end_stream(), Ok(3));
                assert_eq!(out.to_vec(), remote(site), "cut at {cut}");
                assert_eq!(f.max_id(), Some(9));
            }
            let mut f = Reframer::new(site);
            let mut out = BytesMut::new();
            f.begin_stream().unwrap();
            for b in &input {
                f.push(std::slice::from_ref(b), &mut out).unwrap();
            }
            assert_eq!(out.to_vec(), remote(site));
        }
    }

    #[test]
    fn several_local_streams_make_one_remote_stream() {
        let mut f = Reframer::new(Some("s"));
        let mut out = BytesMut::new();
        for _ in 0..3 {
            f.begin_stream().unwrap();
            f.push(&local(&ROWS), &mut out).unwrap();
            assert_eq!(f.end_stream(), Ok(3));
        }
        assert_eq!(f.rows(), 9);
        // An empty claim: header and trailer only.
        f.begin_stream().unwrap();
        f.push(&local(&[]), &mut out).unwrap();
        assert_eq!(f.end_stream(), Ok(0));
        assert_eq!(f.rows(), 9);
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let good = local(&ROWS);
        let mut bad_sig = good.clone();
        bad_sig[0] = b'X';
        let mut bad_count = good.clone();
        bad_count[19..21].copy_from_slice(&5i16.to_be_bytes());
        let mut bad_id = good.clone();
        bad_id[21..25].copy_from_slice(&4i32.to_be_bytes());
        let mut bad_len = good.clone();
        bad_len[33..37].copy_from_slice(&(-7i32).to_be_bytes());
        let mut after = good.clone();
        after.push(0);
        for (name, input) in [
            ("signature", bad_sig),
            ("count", bad_count),
            ("id", bad_id),
            ("length", bad_len),
            ("after the trailer", after),
        ] {
            let mut f = Reframer::new(None);
            let mut out = BytesMut::new();
            f.begin_stream().unwrap();
            assert!(f.push(&input, &mut out).is_err(), "{name}");
        }
        // A stream cut in the middle of a row.
        let mut f = Reframer::new(None);
        let mut out = BytesMut::new();
        f.begin_stream().unwrap();
        f.push(&good[..40], &mut out).unwrap();
        assert!(f.end_stream().is_err());
        assert!(f.begin_stream().is_err());
        // Random bytes never panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut input = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % input.len() as u64) as usize;
                input[i] = (seed >> 32) as u8;
            }
            let mut f = Reframer::new(Some("x"));
            let mut out = BytesMut::new();
            let _ = f.begin_stream();
            let _ = f.push(&input, &mut out);
        }
    }
}
