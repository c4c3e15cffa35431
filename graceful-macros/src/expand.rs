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
    // The application's package, known here and not in the library.
    match &config.version {
        Some(version) => builder.extend(quote! { .version(#version) }),
        None => builder.extend(quote! {
            .__package_version(
                ::core::option_env!("CARGO_PKG_NAME"),
                ::core::option_env!("CARGO_PKG_VERSION"),
            )
        }),
    }

    quote! {
        #(#attrs)*
        #vis fn #ident() {
            async fn __graceful_main() #output #block
            #builder.run_and_exit(__graceful_main)
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::{TokenStream, TokenTree};
    use quote::quote;

    /// The messages of the `compile_error!`s in `tokens`.
    fn compile_errors(tokens: TokenStream) -> Vec<String> {
        let mut messages = Vec::new();
        let mut trees = tokens.into_iter();
        while let Some(tree) = trees.next() {
            match tree {
                TokenTree::Ident(name) if name == "compile_error" => {
                    let (Some(_bang), Some(TokenTree::Group(args))) = (trees.next(), trees.next())
                    else {
                        panic!("`compile_error` without its arguments");
                    };
                    let message: syn::LitStr = syn::parse2(args.stream()).unwrap();
                    messages.push(message.value());
                }
                TokenTree::Group(group) => messages.extend(compile_errors(group.stream())),
                _ => {}
            }
        }
        messages
    }

    #[test]
    fn each_option_becomes_its_call_on_the_server_builder() {
        let out = super::main(
            quote!(
                stop_timeout = "20s",
                ready_timeout = "1m",
                idle_grace = "0s",
                shutdown_delay = "5s",
                header_timeout = "10s",
                idle_timeout = "90s",
                watchdog = "1s",
                reload = [SIGHUP, SIGUSR2],
                stop = [SIGTERM],
                worker_threads = 2,
                max_connections = 100,
                max_header_size = 16384,
                max_draining = 3,
                watch = true,
                upgrade_master = false,
                mode = "master",
                pid_file = "/run/a.pid",
                control_socket = "/run/a.sock",
                watch_paths = ["/etc/a", "/etc/b"],
                user = "www-data",
                group = "web",
                version = "1.4.2+8c0ffee"
            ),
            quote!(
                /// Serves.
                pub async fn main() -> Result<(), String> {
                    serve().await
                }
            ),
        );
        let expected = quote! {
            /// Serves.
            pub fn main() {
                async fn __graceful_main() -> Result<(), String> { serve().await }
                ::graceful::Server::new()
                    .stop_timeout(::core::time::Duration::from_millis(20000u64))
                    .ready_timeout(::core::time::Duration::from_millis(60000u64))
                    .idle_grace(::core::time::Duration::from_millis(0u64))
                    .shutdown_delay(::core::time::Duration::from_millis(5000u64))
                    .header_timeout(::core::time::Duration::from_millis(10000u64))
                    .idle_timeout(::core::time::Duration::from_millis(90000u64))
                    .watchdog(::core::time::Duration::from_millis(1000u64))
                    .reload_signals([::graceful::Signal::SIGHUP, ::graceful::Signal::SIGUSR2])
                    .stop_signals([::graceful::Signal::SIGTERM])
                    .worker_threads(2usize)
                    .max_connections(100usize)
                    .max_header_size(16384usize)
                    .max_draining(3usize)
                    .watch(true)
                    .upgrade_master(false)
                    .pid_file("/run/a.pid")
                    .control_socket("/run/a.sock")
                    .watch_paths(["/etc/a", "/etc/b"])
                    .user("www-data")
                    .group("web")
                    .version("1.4.2+8c0ffee")
                    .run_and_exit(__graceful_main)
            }
        };
        assert_eq!(out.to_string(), expected.to_string());
    }

    #[test]
    fn defaults_add_no_call_but_the_packages_version() {
        // `watch = false` and `mode = "master"` are the defaults: no call.
        // The version is the package's, read where the macro expands.
        for args in [quote!(), quote!(watch = false, mode = "master")] {
            let out = super::main(
                args,
                quote!(
                    async fn main() {}
                ),
            );
            let expected = quote! {
                fn main() {
                    async fn __graceful_main() {}
                    ::graceful::Server::new()
                        .__package_version(
                            ::core::option_env!("CARGO_PKG_NAME"),
                            ::core::option_env!("CARGO_PKG_VERSION"),
                        )
                        .run_and_exit(__graceful_main)
                }
            };
            assert_eq!(out.to_string(), expected.to_string());
        }
        let out = super::main(
            quote!(mode = "single"),
            quote!(
                async fn main() {}
            ),
        );
        assert!(
            out.to_string()
                .contains(&quote!(.mode(::graceful::Mode::Single)).to_string()),
            "{out}"
        );
    }

    #[test]
    fn a_main_the_bootstrap_cannot_call_is_an_error_and_the_code_is_kept() {
        // Not async: kept as written, beside the error.
        let out = super::main(
            quote!(),
            quote!(
                fn main() {}
            ),
        );
        assert!(out.to_string().starts_with(
            &quote!(
                fn main() {}
            )
            .to_string()
        ));
        assert_eq!(
            compile_errors(out),
            ["`#[graceful::main]` needs an `async fn`; write `async fn main()`"]
        );
        // Parameters, or generics (parameters or a `where` clause alone):
        // the body is kept in a function of its own, so that the user's
        // code is still checked.
        let cases = [
            (
                quote!(async fn main(port: u16) {}),
                "`#[graceful::main]` takes a `main` without parameters; read arguments with `std::env::args()`",
            ),
            (
                quote!(async fn main<T>() {}),
                "`#[graceful::main]` cannot be used on a generic function",
            ),
            (
                quote!(async fn main() where u8: Copy {}),
                "`#[graceful::main]` cannot be used on a generic function",
            ),
        ];
        for (item, message) in cases {
            let out = super::main(quote!(), item.clone());
            assert!(
                out.to_string().contains(
                    &quote!(#[allow(dead_code, unused_variables)] async fn __graceful_main)
                        .to_string()
                ),
                "{out}"
            );
            assert!(!out.to_string().contains("run_and_exit"), "{out}");
            assert_eq!(compile_errors(out), [message], "{item}");
        }
        // Not a function at all.
        let out = super::main(
            quote!(),
            quote!(
                struct Main;
            ),
        );
        assert!(out.to_string().starts_with(
            &quote!(
                struct Main;
            )
            .to_string()
        ));
        assert_eq!(compile_errors(out), ["expected `fn`"]);
    }

    #[test]
    fn mistakes_in_the_options_and_the_signature_are_reported_together() {
        let out = super::main(
            quote!(stop_timeout = 5),
            quote!(
                fn main() {}
            ),
        );
        let errors = compile_errors(out);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("`stop_timeout` takes a duration"));
        assert!(errors[1].starts_with("`#[graceful::main]` needs an `async fn`"));
        // An option's mistake alone, on an async main: no bootstrap.
        let out = super::main(
            quote!(mode = "solo"),
            quote!(
                async fn main() {}
            ),
        );
        assert!(!out.to_string().contains("run_and_exit"), "{out}");
        assert_eq!(compile_errors(out).len(), 1);
    }
}
