//! The `voxsig-bridge` command.
fn main() {
    println!("voxsig-bridge {}", env!("CARGO_PKG_VERSION"));
}
