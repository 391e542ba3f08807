//! `ntmd`, the NTMobile agent (being built: issue 4).

mod dnsstub;

fn main() {}
