//! The `#[graceful::main]` attribute of
//! [`graceful-reload`](https://docs.rs/graceful-reload).
//!
//! Use them through the runtime crate: `#[graceful::main]`. Everything the
//! attribute does is also reachable without it, through `graceful::Server`.

mod args;
mod config;
mod expand;

use proc_macro::TokenStream;

/// Turns `async fn main` into the graceful master/worker bootstrap.
///
/// See `graceful::main` for the options and examples.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::main(args.into(), item.into()).into()
}
