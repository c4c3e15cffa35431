//! Compile-time errors of `#[graceful::main]`: one file per mistake, each
//! with the exact error a user sees (`tests/ui/fail/*.stderr`), and the
//! forms that must compile (`tests/ui/pass`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
