//! Machine-dependent pure logic (x86-64): the page-table format and the
//! pmap over it.

pub mod paging;
pub mod pmap;
