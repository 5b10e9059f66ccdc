//! Model check of rights transfer (proptest).
