//! BACnet tag encoding (ANSI/ASHRAE 135 clause 20.2): a bounds-checked reader
//! and a writer for the primitive values this agent sends and receives.
//!
//! Guarantees: every read checks the remaining length first and returns
//! [`CodecError`] instead of slicing out of range; lengths are never used in
//! unchecked arithmetic; constructed values nest at most [`MAX_DEPTH`] deep,
//! so a hostile datagram cannot exhaust the stack.

use super::types::{ObjectId, Value};

/// How deeply constructed values may nest before a datagram is refused.
pub(crate) const MAX_DEPTH: usize = 8;

/// Why a datagram could not be decoded (or a message not encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The data ended before a field it announced.
    #[error("truncated: needed {needed} more bytes at offset {at}")]
    Truncated {
        /// Offset where the read started.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A field held a value the protocol does not allow here.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A message would not fit the BACnet/IP length field.
    #[error("message too long to encode")]
    TooLong,
}

/// Tag class: application (self-describing type) or context (meaning given by position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Application,
    Context,
}

/// What a tag header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagKind {
    /// A primitive with this many content bytes (for an application boolean: the value).
    Data(usize),
    /// An opening tag of a constructed context value.
    Opening,
    /// A closing tag.
    Closing,
}

/// A decoded tag header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag {
    pub number: u8,
    pub class: Class,
    pub kind: TagKind,
}

impl Tag {
    pub fn is_opening(&self, number: u8) -> bool {
        self.class == Class::Context && self.kind == TagKind::Opening && self.number == number
    }
    pub fn is_closing(&self, number: u8) -> bool {
        self.class == Class::Context && self.kind == TagKind::Closing && self.number == number
    }
    pub fn is_context(&self, number: u8) -> bool {
        self.class == Class::Context
            && matches!(self.kind, TagKind::Data(_))
            && self.number == number
    }
}

/// A cursor over a received buffer; every method is bounds-checked.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Truncated {
            at: self.pos,
            needed: 1,
        })?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let rest = self.remaining();
        if rest.len() < n {
            return Err(CodecError::Truncated {
                at: self.pos,
                needed: n - rest.len(),
            });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    /// Read a tag header.
    pub fn tag(&mut self) -> Result<Tag, CodecError> {
        let b = self.u8()?;
        let mut number = b >> 4;
        if number == 15 {
            number = self.u8()?;
        }
        let class = if b & 0x08 != 0 {
            Class::Context
        } else {
            Class::Application
        };
        let lvt = b & 0x07;
        let kind = match (class, lvt) {
            (Class::Context, 6) => TagKind::Opening,
            (Class::Context, 7) => TagKind::Closing,
            (Class::Application, 6 | 7) if number != 1 => {
                return Err(CodecError::Invalid("application tag length"))
            }
            (_, 5) => {
                let ext = self.u8()?;
                let len = match ext {
                    254 => usize::from(self.u16()?),
                    255 => {
                        let b = self.take(4)?;
                        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .map_err(|_| CodecError::Invalid("length"))?
                    }
                    n => usize::from(n),
                };
                TagKind::Data(len)
            }
            (_, n) => TagKind::Data(usize::from(n)),
        };
        Ok(Tag {
            number,
            class,
            kind,
        })
    }

    /// The next tag header, without consuming it.
    pub fn peek_tag(&self) -> Result<Tag, CodecError> {
        self.clone().tag()
    }

    /// Content bytes of a primitive tag (an application boolean has none).
    fn content(&mut self, tag: Tag) -> Result<&'a [u8], CodecError> {
        match tag.kind {
            TagKind::Data(_) if tag.class == Class::Application && tag.number == 1 => Ok(&[]),
            TagKind::Data(len) => self.take(len),
            _ => Err(CodecError::Invalid(
                "constructed tag where a primitive was expected",
            )),
        }
    }

    /// Read context tag `number` holding an unsigned integer.
    pub fn ctx_unsigned(&mut self, number: u8) -> Result<u64, CodecError> {
        let tag = self.tag()?;
        if !tag.is_context(number) {
            return Err(CodecError::Invalid("context tag"));
        }
        unsigned(self.content(tag)?)
    }

    /// Read context tag `number` holding an object identifier.
    pub fn ctx_object_id(&mut self, number: u8) -> Result<ObjectId, CodecError> {
        let tag = self.tag()?;
        if !tag.is_context(number) {
            return Err(CodecError::Invalid("context tag"));
        }
        object_id(self.content(tag)?)
    }

    /// Read an opening tag `number`.
    pub fn opening(&mut self, number: u8) -> Result<(), CodecError> {
        if self.tag()?.is_opening(number) {
            Ok(())
        } else {
            Err(CodecError::Invalid("missing opening tag"))
        }
    }

    /// Read a closing tag `number`.
    pub fn closing(&mut self, number: u8) -> Result<(), CodecError> {
        if self.tag()?.is_closing(number) {
            Ok(())
        } else {
            Err(CodecError::Invalid("missing closing tag"))
        }
    }

    /// If the next tag is context `number` (primitive), read it as unsigned.
    pub fn optional_ctx_unsigned(&mut self, number: u8) -> Result<Option<u64>, CodecError> {
        if !self.is_empty() && self.peek_tag()?.is_context(number) {
            self.ctx_unsigned(number).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Read one application-tagged value.
    pub fn app_value(&mut self) -> Result<Value, CodecError> {
        let tag = self.tag()?;
        if tag.class != Class::Application {
            return Err(CodecError::Invalid("expected an application tag"));
        }
        self.value_after(tag, 0)
    }

    /// Read values until the closing tag `number` (consumed); what a property value holds.
    pub fn values_until_closing(&mut self, number: u8) -> Result<Value, CodecError> {
        let items = self.items_until_closing(number, 0)?;
        Ok(collapse(items))
    }

    fn items_until_closing(&mut self, number: u8, depth: usize) -> Result<Vec<Value>, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::Invalid("nesting too deep"));
        }
        let mut items = Vec::new();
        loop {
            let tag = self.tag()?;
            if tag.is_closing(number) {
                return Ok(items);
            }
            items.push(self.value_after(tag, depth)?);
        }
    }

    fn value_after(&mut self, tag: Tag, depth: usize) -> Result<Value, CodecError> {
        match (tag.class, tag.kind) {
            (Class::Context, TagKind::Opening) => {
                let items = self.items_until_closing(tag.number, depth + 1)?;
                Ok(Value::Constructed {
                    tag: tag.number,
                    items,
                })
            }
            (_, TagKind::Closing) | (Class::Application, TagKind::Opening) => {
                Err(CodecError::Invalid("unexpected closing tag"))
            }
            (Class::Context, TagKind::Data(_)) => Ok(Value::Context {
                tag: tag.number,
                data: self.content(tag)?.to_vec(),
            }),
            (Class::Application, TagKind::Data(len)) => {
                let data = self.content(tag)?;
                application(tag.number, len, data)
            }
        }
    }
}

fn collapse(mut items: Vec<Value>) -> Value {
    if items.len() == 1 {
        items.pop().unwrap_or(Value::Null)
    } else {
        Value::List(items)
    }
}

fn application(number: u8, len: usize, data: &[u8]) -> Result<Value, CodecError> {
    Ok(match number {
        0 => Value::Null,
        1 => Value::Boolean(len != 0),
        2 => Value::Unsigned(unsigned(data)?),
        3 => Value::Signed(signed(data)?),
        4 => Value::Real(f32::from_be_bytes(
            data.try_into()
                .map_err(|_| CodecError::Invalid("real length"))?,
        )),
        5 => Value::Double(f64::from_be_bytes(
            data.try_into()
                .map_err(|_| CodecError::Invalid("double length"))?,
        )),
        6 => Value::OctetString(data.to_vec()),
        7 => Value::CharacterString(char_string(data)?),
        8 => {
            let (&unused_bits, bytes) = data
                .split_first()
                .ok_or(CodecError::Invalid("bit string length"))?;
            if unused_bits > 7 || (bytes.is_empty() && unused_bits != 0) {
                return Err(CodecError::Invalid("bit string unused bits"));
            }
            Value::BitString {
                unused_bits,
                bytes: bytes.to_vec(),
            }
        }
        9 => Value::Enumerated(
            u32::try_from(unsigned(data)?).map_err(|_| CodecError::Invalid("enumerated"))?,
        ),
        10 => Value::Date(
            data.try_into()
                .map_err(|_| CodecError::Invalid("date length"))?,
        ),
        11 => Value::Time(
            data.try_into()
                .map_err(|_| CodecError::Invalid("time length"))?,
        ),
        12 => Value::ObjectId(object_id(data)?),
        _ => return Err(CodecError::Invalid("application tag number")),
    })
}

/// Big-endian unsigned of 1 to 8 bytes.
pub(crate) fn unsigned(data: &[u8]) -> Result<u64, CodecError> {
    if data.is_empty() || data.len() > 8 {
        return Err(CodecError::Invalid("unsigned length"));
    }
    Ok(data.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Big-endian two's-complement signed of 1 to 8 bytes.
pub(crate) fn signed(data: &[u8]) -> Result<i64, CodecError> {
    if data.is_empty() || data.len() > 8 {
        return Err(CodecError::Invalid("signed length"));
    }
    let fill = if data[0] & 0x80 != 0 { 0xff } else { 0 };
    let mut bytes = [fill; 8];
    bytes[8 - data.len()..].copy_from_slice(data);
    Ok(i64::from_be_bytes(bytes))
}

fn object_id(data: &[u8]) -> Result<ObjectId, CodecError> {
    let raw: [u8; 4] = data
        .try_into()
        .map_err(|_| CodecError::Invalid("object identifier length"))?;
    Ok(ObjectId::from_raw(u32::from_be_bytes(raw)))
}

fn char_string(data: &[u8]) -> Result<String, CodecError> {
    let (&charset, text) = data
        .split_first()
        .ok_or(CodecError::Invalid("character string length"))?;
    Ok(match charset {
        // UCS-2 big-endian.
        4 => text
            .chunks(2)
            .map(|c| {
                let unit = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
                char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        // ISO 8859-1: each byte is its code point.
        5 => text.iter().map(|b| char::from(*b)).collect(),
        // UTF-8 (0) and anything else: lossy UTF-8.
        _ => String::from_utf8_lossy(text).into_owned(),
    })
}

/// Appends tags to a buffer being built.
pub(crate) struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    fn header(&mut self, number: u8, context: bool, len: usize) {
        let class = if context { 0x08 } else { 0 };
        let lvt = if len < 5 { len as u8 } else { 5 };
        if number < 15 {
            self.0.push((number << 4) | class | lvt);
        } else {
            self.0.push(0xf0 | class | lvt);
            self.0.push(number);
        }
        if len >= 5 {
            if len < 254 {
                self.0.push(len as u8);
            } else if let Ok(short) = u16::try_from(len) {
                self.0.push(254);
                self.0.extend_from_slice(&short.to_be_bytes());
            } else {
                self.0.push(255);
                self.0
                    .extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            }
        }
    }

    fn primitive(&mut self, number: u8, context: bool, data: &[u8]) {
        self.header(number, context, data.len());
        self.0.extend_from_slice(data);
    }

    pub fn opening(&mut self, number: u8) {
        self.special(number, 6);
    }

    pub fn closing(&mut self, number: u8) {
        self.special(number, 7);
    }

    fn special(&mut self, number: u8, lvt: u8) {
        if number < 15 {
            self.0.push((number << 4) | 0x08 | lvt);
        } else {
            self.0.push(0xf8 | lvt);
            self.0.push(number);
        }
    }

    pub fn ctx_unsigned(&mut self, number: u8, v: u64) {
        self.primitive(number, true, minimal_unsigned(v).as_slice());
    }

    pub fn ctx_object_id(&mut self, number: u8, id: ObjectId) {
        self.primitive(number, true, &id.to_raw().to_be_bytes());
    }

    /// Encode an application-tagged value (context values are written with their own tag).
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.push(0x00),
            Value::Boolean(b) => self.0.push(0x10 | u8::from(*b)),
            Value::Unsigned(u) => self.primitive(2, false, minimal_unsigned(*u).as_slice()),
            Value::Signed(i) => self.primitive(3, false, minimal_signed(*i).as_slice()),
            Value::Real(r) => self.primitive(4, false, &r.to_be_bytes()),
            Value::Double(d) => self.primitive(5, false, &d.to_be_bytes()),
            Value::OctetString(o) => self.primitive(6, false, o),
            Value::CharacterString(s) => {
                let mut data = Vec::with_capacity(s.len() + 1);
                data.push(0);
                data.extend_from_slice(s.as_bytes());
                self.primitive(7, false, &data);
            }
            Value::BitString { unused_bits, bytes } => {
                let mut data = Vec::with_capacity(bytes.len() + 1);
                data.push(*unused_bits);
                data.extend_from_slice(bytes);
                self.primitive(8, false, &data);
            }
            Value::Enumerated(e) => {
                self.primitive(9, false, minimal_unsigned(u64::from(*e)).as_slice())
            }
            Value::Date(d) => self.primitive(10, false, d),
            Value::Time(t) => self.primitive(11, false, t),
            Value::ObjectId(id) => self.primitive(12, false, &id.to_raw().to_be_bytes()),
            Value::Context { tag, data } => self.primitive(*tag, true, data),
            Value::Constructed { tag, items } => {
                self.opening(*tag);
                for item in items {
                    self.value(item);
                }
                self.closing(*tag);
            }
            Value::List(items) => {
                for item in items {
                    self.value(item);
                }
            }
        }
    }
}

/// Up to 8 big-endian bytes, shortest form.
pub(crate) struct Minimal {
    bytes: [u8; 8],
    start: usize,
}

impl Minimal {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

pub(crate) fn minimal_unsigned(v: u64) -> Minimal {
    let bytes = v.to_be_bytes();
    let start = (v.leading_zeros() as usize / 8).min(7);
    Minimal { bytes, start }
}

fn minimal_signed(v: i64) -> Minimal {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    Minimal { bytes, start }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: Value) {
        let mut buf = Vec::new();
        Writer(&mut buf).value(&v);
        let got = Reader::new(&buf).app_value().unwrap();
        assert_eq!(got, v);
    }

    #[test]
    fn values_roundtrip() {
        for v in [
            Value::Null,
            Value::Boolean(true),
            Value::Boolean(false),
            Value::Unsigned(0),
            Value::Unsigned(300),
            Value::Unsigned(u64::MAX),
            Value::Signed(-1),
            Value::Signed(-129),
            Value::Signed(127),
            Value::Signed(i64::MIN),
            Value::Real(1.5),
            Value::Double(-2.25),
            Value::CharacterString("Zählerschrank 3 ".repeat(30)),
            Value::BitString {
                unused_bits: 4,
                bytes: vec![0x40],
            },
            Value::Enumerated(19),
            Value::ObjectId(ObjectId::parse("accumulator:3").unwrap()),
        ] {
            roundtrip(v);
        }
    }

    #[test]
    fn nine_byte_integer_is_an_error_not_a_panic() {
        let buf = [0x25, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert!(Reader::new(&buf).app_value().is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut buf = vec![0x0e; 100];
        buf.extend(vec![0x0f; 100]);
        buf.push(0x1f);
        assert!(Reader::new(&buf).values_until_closing(1).is_err());
    }
}
