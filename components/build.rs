//! Marks the tests whose services are absent (see build/services.rs).

#[path = "build/services.rs"]
mod services;

fn main() {
    services::emit();
}
