//! Platform devices the VMM owns directly (console, debug exit).
