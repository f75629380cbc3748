//! Working-day calendar (being written).
