//! The service bodies this agent speaks (clause 15.5, 15.7, 16.10): ReadProperty,
//! ReadPropertyMultiple, Who-Is and I-Am, plus the Error PDU body; encoders for
//! both the client and the simulator, decoders for both directions.
//!
//! Guarantees: decoders take any byte slice and return [`CodecError`] on
//! anything malformed, truncated or trailing; lists are capped at
//! [`MAX_ITEMS`] entries so a hostile reply cannot make us allocate without bound.

use super::tags::{CodecError, Reader, Writer};
use super::types::{ErrorCode, ObjectId, PropertyId, PropertyRef, PropertyResult, Value};

/// Most entries a decoded list may hold (a datagram of 1497 bytes holds far fewer).
pub(crate) const MAX_ITEMS: usize = 2048;

/// Who-Is device range (inclusive).
pub(crate) type Range = Option<(u32, u32)>;

/// An I-Am announcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IAmBody {
    pub device: ObjectId,
    pub max_apdu: u64,
    pub segmentation: u32,
    pub vendor_id: u64,
}

fn property_id(v: u64) -> Result<PropertyId, CodecError> {
    u32::try_from(v)
        .map(PropertyId)
        .map_err(|_| CodecError::Invalid("property identifier"))
}

fn check_items(n: usize) -> Result<(), CodecError> {
    if n >= MAX_ITEMS {
        Err(CodecError::Invalid("too many items"))
    } else {
        Ok(())
    }
}

// ---- ReadProperty ----

pub(crate) fn encode_read_property(buf: &mut Vec<u8>, p: PropertyRef) {
    let mut w = Writer(buf);
    w.ctx_object_id(0, p.object);
    w.ctx_unsigned(1, u64::from(p.property.0));
}

pub(crate) fn decode_read_property(body: &[u8]) -> Result<PropertyRef, CodecError> {
    match decode_read_property_indexed(body)? {
        (p, None) => Ok(p),
        (_, Some(_)) => Err(CodecError::Invalid("array index not supported")),
    }
}

/// A ReadProperty request with its optional array index (for `describe`).
pub(crate) fn encode_read_property_indexed(buf: &mut Vec<u8>, p: PropertyRef, index: u32) {
    encode_read_property(buf, p);
    Writer(buf).ctx_unsigned(2, u64::from(index));
}

/// Decode a ReadProperty request and its optional array index.
pub(crate) fn decode_read_property_indexed(
    body: &[u8],
) -> Result<(PropertyRef, Option<u32>), CodecError> {
    let mut r = Reader::new(body);
    let object = r.ctx_object_id(0)?;
    let property = property_id(r.ctx_unsigned(1)?)?;
    let index = r
        .optional_ctx_unsigned(2)?
        .map(|i| u32::try_from(i).map_err(|_| CodecError::Invalid("array index")))
        .transpose()?;
    end(&r)?;
    Ok((PropertyRef { object, property }, index))
}

pub(crate) fn encode_read_property_ack(buf: &mut Vec<u8>, p: PropertyRef, value: &Value) {
    let mut w = Writer(buf);
    w.ctx_object_id(0, p.object);
    w.ctx_unsigned(1, u64::from(p.property.0));
    w.opening(3);
    w.value(value);
    w.closing(3);
}

/// Decode a ReadProperty ack, checking it answers `expected`.
pub(crate) fn decode_read_property_ack(
    body: &[u8],
    expected: PropertyRef,
) -> Result<Value, CodecError> {
    let mut r = Reader::new(body);
    let object = r.ctx_object_id(0)?;
    let property = property_id(r.ctx_unsigned(1)?)?;
    let _index = r.optional_ctx_unsigned(2)?;
    if object != expected.object || property != expected.property {
        return Err(CodecError::Invalid("ack for another object or property"));
    }
    r.opening(3)?;
    let value = r.values_until_closing(3)?;
    end(&r)?;
    Ok(value)
}

// ---- ReadPropertyMultiple ----

/// Encode an RPM request, grouping consecutive properties of one object.
pub(crate) fn encode_rpm(buf: &mut Vec<u8>, props: &[PropertyRef]) {
    let mut w = Writer(buf);
    let mut i = 0;
    while let Some(first) = props.get(i) {
        w.ctx_object_id(0, first.object);
        w.opening(1);
        while let Some(p) = props.get(i).filter(|p| p.object == first.object) {
            w.ctx_unsigned(0, u64::from(p.property.0));
            i += 1;
        }
        w.closing(1);
    }
}

pub(crate) fn decode_rpm(body: &[u8]) -> Result<Vec<PropertyRef>, CodecError> {
    let mut r = Reader::new(body);
    let mut out = Vec::new();
    while !r.is_empty() {
        let object = r.ctx_object_id(0)?;
        r.opening(1)?;
        loop {
            if r.peek_tag()?.is_closing(1) {
                r.closing(1)?;
                break;
            }
            let property = property_id(r.ctx_unsigned(0)?)?;
            if r.optional_ctx_unsigned(1)?.is_some() {
                return Err(CodecError::Invalid("array index not supported"));
            }
            check_items(out.len())?;
            out.push(PropertyRef { object, property });
        }
    }
    if out.is_empty() {
        return Err(CodecError::Invalid("empty ReadPropertyMultiple"));
    }
    Ok(out)
}

/// Encode an RPM ack for `results` (which follow the request's order).
pub(crate) fn encode_rpm_ack(buf: &mut Vec<u8>, results: &[(PropertyRef, PropertyResult)]) {
    let mut w = Writer(buf);
    let mut i = 0;
    while let Some((first, _)) = results.get(i) {
        w.ctx_object_id(0, first.object);
        w.opening(1);
        while let Some((p, result)) = results.get(i).filter(|(p, _)| p.object == first.object) {
            w.ctx_unsigned(2, u64::from(p.property.0));
            match result {
                Ok(v) => {
                    w.opening(4);
                    w.value(v);
                    w.closing(4);
                }
                Err(e) => {
                    w.opening(5);
                    w.value(&Value::Enumerated(e.class));
                    w.value(&Value::Enumerated(e.code));
                    w.closing(5);
                }
            }
            i += 1;
        }
        w.closing(1);
    }
}

/// Decode an RPM ack and match it to the request: one result per requested property, in order.
pub(crate) fn decode_rpm_ack(
    body: &[u8],
    requested: &[PropertyRef],
) -> Result<Vec<PropertyResult>, CodecError> {
    let mut r = Reader::new(body);
    let mut got: Vec<(PropertyRef, PropertyResult)> = Vec::new();
    while !r.is_empty() {
        let object = r.ctx_object_id(0)?;
        r.opening(1)?;
        loop {
            if r.peek_tag()?.is_closing(1) {
                r.closing(1)?;
                break;
            }
            let property = property_id(r.ctx_unsigned(2)?)?;
            let _index = r.optional_ctx_unsigned(3)?;
            let tag = r.tag()?;
            let result = if tag.is_opening(4) {
                Ok(r.values_until_closing(4)?)
            } else if tag.is_opening(5) {
                let e = decode_error_pair(&mut r)?;
                r.closing(5)?;
                Err(e)
            } else {
                return Err(CodecError::Invalid("RPM result tag"));
            };
            check_items(got.len())?;
            got.push((PropertyRef { object, property }, result));
        }
    }
    if got.len() != requested.len() || got.iter().zip(requested).any(|((g, _), want)| g != want) {
        return Err(CodecError::Invalid("RPM ack does not match the request"));
    }
    Ok(got.into_iter().map(|(_, result)| result).collect())
}

// ---- Error PDU ----

fn decode_error_pair(r: &mut Reader<'_>) -> Result<ErrorCode, CodecError> {
    match (r.app_value()?, r.app_value()?) {
        (Value::Enumerated(class), Value::Enumerated(code)) => Ok(ErrorCode { class, code }),
        _ => Err(CodecError::Invalid("error class/code")),
    }
}

/// Decode an Error PDU body: a class/code pair, possibly wrapped in context tag 0.
pub(crate) fn decode_error(body: &[u8]) -> Result<ErrorCode, CodecError> {
    let mut r = Reader::new(body);
    let wrapped = r.peek_tag()?.is_opening(0);
    if wrapped {
        r.opening(0)?;
    }
    let e = decode_error_pair(&mut r)?;
    if wrapped {
        r.closing(0)?;
    }
    Ok(e)
}

pub(crate) fn encode_error(buf: &mut Vec<u8>, e: ErrorCode) {
    let mut w = Writer(buf);
    w.value(&Value::Enumerated(e.class));
    w.value(&Value::Enumerated(e.code));
}

// ---- Who-Is / I-Am ----

pub(crate) fn encode_who_is(buf: &mut Vec<u8>, range: Range) {
    if let Some((low, high)) = range {
        let mut w = Writer(buf);
        w.ctx_unsigned(0, u64::from(low));
        w.ctx_unsigned(1, u64::from(high));
    }
}

pub(crate) fn decode_who_is(body: &[u8]) -> Result<Range, CodecError> {
    if body.is_empty() {
        return Ok(None);
    }
    let mut r = Reader::new(body);
    let low = r.ctx_unsigned(0)?;
    let high = r.ctx_unsigned(1)?;
    end(&r)?;
    let limit = |v: u64| u32::try_from(v).map_err(|_| CodecError::Invalid("Who-Is range"));
    Ok(Some((limit(low)?, limit(high)?)))
}

pub(crate) fn encode_i_am(buf: &mut Vec<u8>, body: &IAmBody) {
    let mut w = Writer(buf);
    w.value(&Value::ObjectId(body.device));
    w.value(&Value::Unsigned(body.max_apdu));
    w.value(&Value::Enumerated(body.segmentation));
    w.value(&Value::Unsigned(body.vendor_id));
}

pub(crate) fn decode_i_am(body: &[u8]) -> Result<IAmBody, CodecError> {
    let mut r = Reader::new(body);
    let fields = (
        r.app_value()?,
        r.app_value()?,
        r.app_value()?,
        r.app_value()?,
    );
    end(&r)?;
    match fields {
        (
            Value::ObjectId(device),
            Value::Unsigned(max_apdu),
            Value::Enumerated(segmentation),
            Value::Unsigned(vendor_id),
        ) if device.object_type() == super::types::ObjectType::DEVICE => Ok(IAmBody {
            device,
            max_apdu,
            segmentation,
            vendor_id,
        }),
        _ => Err(CodecError::Invalid("I-Am fields")),
    }
}

fn end(r: &Reader<'_>) -> Result<(), CodecError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(CodecError::Invalid("trailing bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(o: &str, prop: PropertyId) -> PropertyRef {
        PropertyRef {
            object: ObjectId::parse(o).unwrap(),
            property: prop,
        }
    }

    #[test]
    fn rpm_roundtrip() {
        let props = vec![
            p("analog-input:1", PropertyId::PRESENT_VALUE),
            p("analog-input:1", PropertyId::UNITS),
            p("accumulator:1", PropertyId::SCALE),
        ];
        let mut buf = Vec::new();
        encode_rpm(&mut buf, &props);
        assert_eq!(decode_rpm(&buf).unwrap(), props);
        let results = vec![
            (props[0], Ok(Value::Real(12.5))),
            (props[1], Ok(Value::Enumerated(19))),
            (props[2], Err(ErrorCode { class: 2, code: 32 })),
        ];
        let mut ack = Vec::new();
        encode_rpm_ack(&mut ack, &results);
        let got = decode_rpm_ack(&ack, &props).unwrap();
        assert_eq!(got, results.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
        assert!(decode_rpm_ack(&ack, &props[..2]).is_err());
    }

    #[test]
    fn rp_and_i_am_roundtrip() {
        let q = p("analog-value:9", PropertyId::OBJECT_NAME);
        let mut buf = Vec::new();
        encode_read_property(&mut buf, q);
        assert_eq!(decode_read_property(&buf).unwrap(), q);
        let mut ack = Vec::new();
        encode_read_property_ack(&mut ack, q, &Value::CharacterString("x".into()));
        assert_eq!(
            decode_read_property_ack(&ack, q).unwrap(),
            Value::CharacterString("x".into())
        );
        let iam = IAmBody {
            device: ObjectId::device(1001).unwrap(),
            max_apdu: 1476,
            segmentation: 3,
            vendor_id: 999,
        };
        let mut b = Vec::new();
        encode_i_am(&mut b, &iam);
        assert_eq!(decode_i_am(&b).unwrap(), iam);
        let mut w = Vec::new();
        encode_who_is(&mut w, Some((1, 4_194_303)));
        assert_eq!(decode_who_is(&w).unwrap(), Some((1, 4_194_303)));
    }
}
