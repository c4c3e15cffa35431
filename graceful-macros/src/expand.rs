//! Expansion of `#[graceful::main]` from a validated [`Config`].
//!
//! The expansion only calls the public API of the runtime crate (plus
//! `::graceful::Server::run_and_exit`), so that everything the attribute does can be
//! written by hand.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use crate::args::RawArgs;
use crate::config::Config;

pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(e) => {
            let error = e.to_compile_error();
            return quote! { #item #error };
        }
    };

    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };

    let config = match syn::parse2::<RawArgs>(args).and_then(Config::from_args) {
        Ok(config) => Some(config),
        Err(e) => {
            push(e);
            None
        }
    };
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        push(syn::Error::new(
            sig.fn_token.span(),
            "`#[graceful::main]` needs an `async fn`; write `async fn main()`",
        ));
    }
    if !sig.inputs.is_empty() {
        push(syn::Error::new(
            sig.inputs.span(),
            "`#[graceful::main]` takes a `main` without parameters; read arguments with `std::env::args()`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        push(syn::Error::new(
            sig.generics.span(),
            "`#[graceful::main]` cannot be used on a generic function",
        ));
    }

    match (config, errors) {
        (Some(config), None) => bootstrap(&func, &config),
        (_, Some(errors)) => with_error(&func, errors),
        (None, None) => unreachable!("a failed parse always carries an error"),
    }
}

/// On error, still emit the user's code so that the IDE keeps working and the
/// user sees our error rather than a cascade of unrelated ones.
fn with_error(func: &ItemFn, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    if func.sig.asyncness.is_none() {
        return quote! { #func #error };
    }
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let ident = &sig.ident;
    let inputs = &sig.inputs;
    let output = &sig.output;
    quote! {
        #(#attrs)*
        #vis fn #ident() {
            #[allow(dead_code, unused_variables)]
            async fn __graceful_main(#inputs) #output #block
        }
        #error
    }
}

fn bootstrap(func: &ItemFn, config: &Config) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let ident = &sig.ident;
    let output = &sig.output;

    let mut builder = quote! { ::graceful::Server::new() };
    let durations = [
        (config.stop_timeout, "stop_timeout"),
        (config.ready_timeout, "ready_timeout"),
        (config.idle_grace, "idle_grace"),
        (config.shutdown_delay, "shutdown_delay"),
        (config.header_timeout, "header_timeout"),
        (config.idle_timeout, "idle_timeout"),
        (config.watchdog, "watchdog"),
    ];
    for (ms, method) in durations {
        if let Some(ms) = ms {
            let method = format_ident!("{method}");
            builder.extend(quote! { .#method(::core::time::Duration::from_millis(#ms)) });
        }
    }
    let signal_lists = [
        (&config.reload, "reload_signals"),
        (&config.stop, "stop_signals"),
    ];
    for (list, method) in signal_lists {
        if let Some(list) = list {
            let method = format_ident!("{method}");
            let items = list.iter().map(|s| {
                let name = syn::Ident::new(&s.name, s.span);
                quote_spanned! {s.span=> ::graceful::Signal::#name }
            });
            builder.extend(quote! { .#method([#(#items),*]) });
        }
    }
    let counts = [
        (config.worker_threads, "worker_threads"),
        (config.max_connections, "max_connections"),
        (config.max_header_size, "max_header_size"),
        (config.max_draining, "max_draining"),
    ];
    for (n, method) in counts {
        if let Some(n) = n {
            let method = format_ident!("{method}");
            builder.extend(quote! { .#method(#n) });
        }
    }
    if config.watch == Some(true) {
        builder.extend(quote! { .watch(true) });
    }
    if let Some(on) = config.upgrade_master {
        builder.extend(quote! { .upgrade_master(#on) });
    }
    if config.mode.as_deref() == Some("single") {
        builder.extend(quote! { .mode(::graceful::Mode::Single) });
    }
    if let Some(path) = &config.pid_file {
        builder.extend(quote! { .pid_file(#path) });
    }
    if let Some(path) = &config.control_socket {
        builder.extend(quote! { .control_socket(#path) });
    }
    if let Some(paths) = &config.watch_paths {
        builder.extend(quote! { .watch_paths([#(#paths),*]) });
    }
    if let Some(user) = &config.user {
        builder.extend(quote! { .user(#user) });
    }
    if let Some(group) = &config.group {
        builder.extend(quote! { .group(#group) });
    }

    quote! {
        #(#attrs)*
        #vis fn #ident() {
            async fn __graceful_main() #output #block
            #builder.run_and_exit(__graceful_main)
        }
    }
}
