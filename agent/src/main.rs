//! `ntmd`, the NTMobile agent (being built: issue 4).

fn main() {}
