//! A faithful fake of the WeChat API, for local runs, demos and tests. A development tool:
//! production code never imports it.
//!
//! CONTRACT STUB: being written.
