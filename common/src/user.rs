//! What only user space needs: aya's `Pod` marker for every map type.

use super::*;

// SAFETY: all of these are plain-old-data `repr(C)` structs whose padding
// is explicit, so any byte pattern is a valid value.
unsafe impl aya::Pod for IpKey {}
unsafe impl aya::Pod for IpInfo {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtKey4 {}
unsafe impl aya::Pod for CtEntry {}
unsafe impl aya::Pod for SuppressEntry {}
unsafe impl aya::Pod for SourceKey {}
unsafe impl aya::Pod for SourceBudget {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for FragPorts {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for Event {}
