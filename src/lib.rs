//! metersync: the sync agent of an energy-metering site (work in progress).
pub mod bacnet;
