//! End-to-end tests: one test binary, so one registry and one set of fixture images serve
//! the whole run.

mod auth;
mod bad_input;
mod containers;
mod copy;
mod debian;
mod images;
mod lazy;
mod profiles;
mod registry_client;
mod union;
