//! Link flags for the gateway boxes' binary (nothing else is built here).
//!
//! On the ARM Linux targets (the Raspberry Pi builds: aarch64, armv7) the `lotlink` binary is
//! linked with packed relative relocations (`-z pack-relative-relocs`, DT_RELR): a
//! position-independent binary otherwise carries one 24-byte RELA entry for every pointer in
//! its read-only data (~39,000 of them, 0.9 MB of the aarch64 binary, BENCHMARKS.md P6);
//! packed, they take a few KB. Needs glibc 2.36 on the box (Debian 12 / Raspberry Pi OS
//! bookworm; dpkg-shlibdeps puts the libc6 version in the .deb's Depends) and binutils 2.38
//! where it is linked. Only the binary: tests and host builds link as before.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && (arch == "aarch64" || arch == "arm") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
