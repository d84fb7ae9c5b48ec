//! Marks the tests whose services are absent (see
//! components/build/services.rs).

#[path = "../../components/build/services.rs"]
mod services;

fn main() {
    services::emit();
}
