//! Connection options (placeholder; being written).
