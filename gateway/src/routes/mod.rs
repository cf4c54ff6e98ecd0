//! One module per audience of the API.

pub mod admin;
pub mod dead_letters;
pub mod health;
pub mod orders;
pub mod payments;
