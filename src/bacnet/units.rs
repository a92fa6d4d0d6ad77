//! BACnet engineering units (clause 21, BACnetEngineeringUnits) as the short,
//! readable symbols stored with each reading ("kWh", "kW", "V", ...).
//!
//! Guarantees: every enumeration value maps to some string: known ones to a
//! symbol, unknown ones to `units-N`, and no-units (95) to `None`.

/// Symbols for the units a metering site meets.
const UNITS: &[(u32, &str)] = &[
    (2, "mA"),
    (3, "A"),
    (4, "Ω"),
    (5, "V"),
    (6, "kV"),
    (7, "MV"),
    (8, "VA"),
    (9, "kVA"),
    (10, "MVA"),
    (11, "var"),
    (12, "kvar"),
    (13, "Mvar"),
    (14, "°"),
    (15, "PF"),
    (16, "J"),
    (17, "kJ"),
    (18, "Wh"),
    (19, "kWh"),
    (20, "BTU"),
    (21, "therm"),
    (27, "Hz"),
    (39, "kg"),
    (47, "W"),
    (48, "kW"),
    (49, "MW"),
    (62, "°C"),
    (64, "°F"),
    (79, "ft³"),
    (80, "m³"),
    (82, "L"),
    (98, "%"),
    (124, "mV"),
    (126, "MJ"),
    (135, "m³/h"),
    (146, "MWh"),
    (203, "varh"),
    (204, "kvarh"),
    (205, "Mvarh"),
    (239, "VAh"),
    (240, "kVAh"),
    (241, "MVAh"),
];

/// The no-units enumeration value.
pub const NO_UNITS: u32 = 95;

/// A readable symbol for a BACnetEngineeringUnits value; `None` for no-units.
pub fn unit_symbol(units: u32) -> Option<String> {
    if units == NO_UNITS {
        return None;
    }
    Some(match UNITS.iter().find(|(n, _)| *n == units) {
        Some((_, s)) => (*s).to_string(),
        None => format!("units-{units}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols() {
        assert_eq!(unit_symbol(19).as_deref(), Some("kWh"));
        assert_eq!(unit_symbol(48).as_deref(), Some("kW"));
        assert_eq!(unit_symbol(27).as_deref(), Some("Hz"));
        assert_eq!(unit_symbol(95), None);
        assert_eq!(unit_symbol(60000).as_deref(), Some("units-60000"));
    }
}
