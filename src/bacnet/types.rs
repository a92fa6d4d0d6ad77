//! BACnet data types the rest of the module speaks in: object identifiers,
//! property identifiers, decoded values and the result of reading one property.
//!
//! Guarantees: parsing a name or number never panics; an [`ObjectId`] always
//! holds a type below 1024 and an instance below 2^22 (the wire limits), so
//! encoding one cannot overflow.

use std::fmt;

/// Largest instance a configured object or device may have: 4194303 (2^22-1,
/// the most a 22-bit identifier carries) is reserved as the "this device"
/// wildcard, so no real object has it.
pub const MAX_INSTANCE: u32 = 4_194_302;
/// The wildcard device instance: `device:4194303` addresses whatever device
/// receives the request (clause 15.5.2), which is how a device's identity is checked.
pub const WILDCARD_INSTANCE: u32 = INSTANCE_MASK;
/// The 22 instance bits of an object identifier.
const INSTANCE_MASK: u32 = (1 << 22) - 1;
/// Largest object type a 10-bit BACnet object identifier can carry.
pub const MAX_OBJECT_TYPE: u16 = (1 << 10) - 1;

/// Object types this agent names (numbers from ANSI/ASHRAE 135, clause 21).
const OBJECT_TYPES: &[(u16, &str)] = &[
    (0, "analog-input"),
    (1, "analog-output"),
    (2, "analog-value"),
    (3, "binary-input"),
    (4, "binary-output"),
    (5, "binary-value"),
    (8, "device"),
    (13, "multi-state-input"),
    (14, "multi-state-output"),
    (19, "multi-state-value"),
    (23, "accumulator"),
    (24, "pulse-converter"),
    (45, "integer-value"),
    (46, "large-analog-value"),
    (48, "positive-integer-value"),
];

/// Properties this agent names (numbers from ANSI/ASHRAE 135, clause 21).
const PROPERTIES: &[(u32, &str)] = &[
    (28, "description"),
    (62, "max-apdu-length-accepted"),
    (75, "object-identifier"),
    (76, "object-list"),
    (77, "object-name"),
    (79, "object-type"),
    (81, "out-of-service"),
    (85, "present-value"),
    (103, "reliability"),
    (111, "status-flags"),
    (117, "units"),
    (120, "vendor-identifier"),
    (121, "vendor-name"),
    (187, "scale"),
];

/// A BACnet object type (10 bits on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectType(u16);

impl ObjectType {
    /// analog-input (0)
    pub const ANALOG_INPUT: Self = Self(0);
    /// analog-value (2)
    pub const ANALOG_VALUE: Self = Self(2);
    /// device (8)
    pub const DEVICE: Self = Self(8);
    /// accumulator (23): present-value is an unsigned count to be multiplied by `scale`.
    pub const ACCUMULATOR: Self = Self(23);

    /// binary-input (3)
    pub const BINARY_INPUT: Self = Self(3);
    /// multi-state-input (13)
    pub const MULTI_STATE_INPUT: Self = Self(13);
    /// integer-value (45)
    pub const INTEGER_VALUE: Self = Self(45);
    /// large-analog-value (46)
    pub const LARGE_ANALOG_VALUE: Self = Self(46);
    /// positive-integer-value (48)
    pub const POSITIVE_INTEGER_VALUE: Self = Self(48);

    /// Whether a point of this type can be read as a number (see [`readable_object_types`]).
    pub fn is_readable(self) -> bool {
        READABLE_OBJECT_TYPES.iter().any(|(n, _)| *n == self.0)
    }

    /// The type with this number, if it fits in 10 bits.
    pub fn new(raw: u16) -> Option<Self> {
        (raw <= MAX_OBJECT_TYPE).then_some(Self(raw))
    }

    /// The wire number.
    pub fn raw(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OBJECT_TYPES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// The object types a meter point may name: the ones whose present value the
/// collector reads (DESIGN: analog/binary/multi-state input and value,
/// accumulator, integer-value, positive-integer-value, large-analog-value),
/// as (wire number, name). The meter definition (`crate::meter_def`) accepts
/// exactly these; each decodes to a number (binary as 0/1, multi-state as the
/// state number, large-analog as a double).
pub const READABLE_OBJECT_TYPES: &[(u16, &str)] = &[
    (0, "analog-input"),
    (2, "analog-value"),
    (3, "binary-input"),
    (5, "binary-value"),
    (13, "multi-state-input"),
    (19, "multi-state-value"),
    (23, "accumulator"),
    (45, "integer-value"),
    (46, "large-analog-value"),
    (48, "positive-integer-value"),
];

/// The largest instance a configured device or point may have: the same
/// number as [`MAX_INSTANCE`] (4194303 is the wildcard, [`WILDCARD_INSTANCE`]),
/// under the name the meter definition uses.
pub const MAX_CONFIGURED_INSTANCE: u32 = MAX_INSTANCE;

/// A BACnet object identifier: type and instance, e.g. `analog-input:1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    object_type: ObjectType,
    instance: u32,
}

impl ObjectId {
    /// An identifier, if `instance` fits in 22 bits (the wildcard included).
    pub fn new(object_type: ObjectType, instance: u32) -> Option<Self> {
        (instance <= INSTANCE_MASK).then_some(Self {
            object_type,
            instance,
        })
    }

    /// The device object of device `instance` (instances above 2^22-1 are `None`).
    pub fn device(instance: u32) -> Option<Self> {
        Self::new(ObjectType::DEVICE, instance)
    }

    /// The object type.
    pub fn object_type(self) -> ObjectType {
        self.object_type
    }

    /// The instance number.
    pub fn instance(self) -> u32 {
        self.instance
    }

    /// The 32-bit wire form (type << 22 | instance).
    pub fn to_raw(self) -> u32 {
        (u32::from(self.object_type.0) << 22) | self.instance
    }

    /// Decode the 32-bit wire form (every 32-bit value is a valid identifier).
    pub fn from_raw(raw: u32) -> Self {
        Self {
            // `raw >> 22` is at most 1023, so it always fits.
            object_type: ObjectType((raw >> 22) as u16),
            instance: raw & INSTANCE_MASK,
        }
    }

    /// Parse `"analog-input:1"` (a type name or number, a colon, an instance).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ty, inst) = s.split_once(':').ok_or_else(|| {
            format!("object `{s}` is not of the form `type:instance`, e.g. `analog-input:1`")
        })?;
        let ty = ty.trim();
        let object_type = match OBJECT_TYPES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(ty))
        {
            Some((n, _)) => ObjectType(*n),
            None => ty
                .parse::<u16>()
                .ok()
                .and_then(ObjectType::new)
                .ok_or_else(|| {
                    format!(
                        "unknown object type `{ty}` (known: {})",
                        known(OBJECT_TYPES)
                    )
                })?,
        };
        let instance: u32 = inst
            .trim()
            .parse()
            .map_err(|_| format!("object instance `{}` is not a number", inst.trim()))?;
        if instance > MAX_INSTANCE {
            return Err(format!(
                "object instance {instance} is above the BACnet limit {MAX_INSTANCE}"
            ));
        }
        Self::new(object_type, instance)
            .ok_or_else(|| format!("object instance {instance} is above the BACnet limit"))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object_type, self.instance)
    }
}

/// A BACnet property identifier (e.g. present-value = 85).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PropertyId(pub u32);

impl PropertyId {
    /// present-value (85): the default property of a point.
    pub const PRESENT_VALUE: Self = Self(85);
    /// units (117): a BACnetEngineeringUnits enumeration.
    pub const UNITS: Self = Self(117);
    /// status-flags (111): in-alarm, fault, overridden, out-of-service.
    pub const STATUS_FLAGS: Self = Self(111);
    /// reliability (103): no-fault-detected (0) or why the value is not to be trusted.
    pub const RELIABILITY: Self = Self(103);
    /// scale (187) of an accumulator.
    pub const SCALE: Self = Self(187);
    /// object-identifier (75).
    pub const OBJECT_IDENTIFIER: Self = Self(75);
    /// object-name (77).
    pub const OBJECT_NAME: Self = Self(77);
    /// vendor-name (121) of a device.
    pub const VENDOR_NAME: Self = Self(121);
    /// vendor-identifier (120) of a device.
    pub const VENDOR_IDENTIFIER: Self = Self(120);

    /// Parse a property name (`present-value`) or number (`85`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match PROPERTIES
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
        {
            Some((n, _)) => Ok(Self(*n)),
            None => s
                .parse::<u32>()
                .ok()
                .filter(|n| *n < (1 << 22))
                .map(Self)
                .ok_or_else(|| {
                    format!(
                        "unknown property `{s}` (known: {}, or a number)",
                        known(PROPERTIES)
                    )
                }),
        }
    }
}

impl fmt::Display for PropertyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PROPERTIES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "property {}", self.0),
        }
    }
}

/// The object types [`ObjectType::is_readable`] accepts, for messages and the README.
pub fn readable_object_types() -> Vec<ObjectType> {
    READABLE_OBJECT_TYPES
        .iter()
        .map(|(n, _)| ObjectType(*n))
        .collect()
}

fn known<T>(table: &[(T, &str)]) -> String {
    table.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// One decoded BACnet value (application-tagged, or context-tagged inside a constructed value).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Null.
    Null,
    /// Boolean.
    Boolean(bool),
    /// Unsigned integer (up to 64 bits).
    Unsigned(u64),
    /// Signed integer (up to 64 bits).
    Signed(i64),
    /// IEEE-754 single.
    Real(f32),
    /// IEEE-754 double.
    Double(f64),
    /// Octet string.
    OctetString(Vec<u8>),
    /// Character string (decoded to UTF-8, lossy for unknown character sets).
    CharacterString(String),
    /// Bit string: bit 0 is the most significant bit of the first byte.
    BitString {
        /// Unused bits at the end of the last byte.
        unused_bits: u8,
        /// The bits.
        bytes: Vec<u8>,
    },
    /// Enumerated.
    Enumerated(u32),
    /// Date (year-1900, month, day, weekday).
    Date([u8; 4]),
    /// Time (hour, minute, second, hundredths).
    Time([u8; 4]),
    /// Object identifier.
    ObjectId(ObjectId),
    /// A context-tagged primitive (e.g. an accumulator's scale choice).
    Context {
        /// The context tag number.
        tag: u8,
        /// Its raw content.
        data: Vec<u8>,
    },
    /// A context-tagged constructed value.
    Constructed {
        /// The context tag number.
        tag: u8,
        /// Its items.
        items: Vec<Value>,
    },
    /// Several values (an array or list property).
    List(Vec<Value>),
}

impl Value {
    /// The value as a number, if it is numeric (booleans and enumerations count: binary and
    /// multi-state points are numbers to a meter reader).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Boolean(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Unsigned(u) => Some(u as f64),
            Value::Signed(i) => Some(i as f64),
            Value::Real(r) => Some(f64::from(r)),
            Value::Double(d) => Some(d),
            Value::Enumerated(e) => Some(f64::from(e)),
            _ => None,
        }
    }

    /// Bit `n` of a bit string (false if absent or not a bit string).
    pub fn bit(&self, n: usize) -> bool {
        match self {
            Value::BitString { bytes, .. } => bytes
                .get(n / 8)
                .is_some_and(|b| b & (0x80u8 >> (n % 8)) != 0),
            _ => false,
        }
    }
}

/// One property of one object to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PropertyRef {
    /// The object.
    pub object: ObjectId,
    /// The property.
    pub property: PropertyId,
}

/// A BACnet error class/code pair, as a device reports it for one property or a whole request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode {
    /// Error class (device, object, property, resources, security, services, ...).
    pub class: u32,
    /// Error code (unknown-object, unknown-property, ...).
    pub code: u32,
}

impl ErrorCode {
    /// class object (1)
    pub const CLASS_OBJECT: u32 = 1;
    /// class property (2)
    pub const CLASS_PROPERTY: u32 = 2;
    /// class services (5)
    pub const CLASS_SERVICES: u32 = 5;
    /// unknown-object (31)
    pub const UNKNOWN_OBJECT: u32 = 31;
    /// unknown-property (32)
    pub const UNKNOWN_PROPERTY: u32 = 32;
    /// service-request-denied (29)
    pub const SERVICE_REQUEST_DENIED: u32 = 29;

    /// Whether the device said the property does not exist (so an optional one can be skipped).
    pub fn is_unknown_property(self) -> bool {
        self.code == Self::UNKNOWN_PROPERTY
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            0 => "other",
            2 => "configuration-in-progress",
            3 => "device-busy",
            9 => "invalid-data-type",
            25 => "operational-problem",
            27 => "read-access-denied",
            29 => "service-request-denied",
            31 => "unknown-object",
            32 => "unknown-property",
            42 => "invalid-array-index",
            45 => "optional-functionality-not-supported",
            54 => "reply too long for the device (it does not segment)",
            _ => return write!(f, "error class {} code {}", self.class, self.code),
        };
        f.write_str(code)
    }
}

/// The outcome of reading one property: its value or the device's error for it.
pub type PropertyResult = Result<Value, ErrorCode>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_parse_and_print() {
        let id = ObjectId::parse("analog-input:1").unwrap();
        assert_eq!(id.to_string(), "analog-input:1");
        assert_eq!(ObjectId::from_raw(id.to_raw()), id);
        assert_eq!(
            ObjectId::parse("Accumulator: 7").unwrap().object_type(),
            ObjectType::ACCUMULATOR
        );
        assert_eq!(
            ObjectId::parse("2:5").unwrap().object_type(),
            ObjectType::ANALOG_VALUE
        );
        assert!(ObjectId::parse("analog-input").is_err());
        assert!(ObjectId::parse("bogus:1")
            .unwrap_err()
            .contains("unknown object type"));
        assert!(ObjectId::parse("analog-input:4194304").is_err());
        assert!(ObjectId::parse("analog-input:4194303").is_err());
        assert!(ObjectId::parse("analog-input:4194302").is_ok());
        for t in [
            "integer-value:1",
            "large-analog-value:1",
            "positive-integer-value:1",
            "binary-input:1",
            "multi-state-value:1",
        ] {
            assert!(
                ObjectId::parse(t).unwrap().object_type().is_readable(),
                "{t}"
            );
        }
        assert!(!ObjectType::DEVICE.is_readable());
        assert!(ObjectId::parse("analog-input:-1").is_err());
        assert!(ObjectId::parse("1024:1").is_err());
    }

    #[test]
    fn properties_parse() {
        assert_eq!(
            PropertyId::parse("present-value").unwrap(),
            PropertyId::PRESENT_VALUE
        );
        assert_eq!(PropertyId::parse("85").unwrap(), PropertyId::PRESENT_VALUE);
        assert!(PropertyId::parse("nope").is_err());
    }
}
