//! The streaming loop (being written).
