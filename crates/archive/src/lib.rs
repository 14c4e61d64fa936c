//! The archive directory (being written).
