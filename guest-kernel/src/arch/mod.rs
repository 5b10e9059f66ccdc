//! Machine-dependent pure logic (x86-64): the page-table format.

pub mod paging;
