//! Parsing of the attribute arguments into untyped `key = value` pairs.
//!
//! Parsing only checks the shape (`key = "str"`, `key = 4`, `key = [A, B]`);
//! what the keys and values mean is checked in `config`, so that several
//! mistakes are reported together.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, Ident, LitInt, LitStr, Token};

/// One `key = value` pair as written by the user.
pub(crate) struct RawArg {
    pub(crate) key: Ident,
    pub(crate) value: RawValue,
}

/// The value of one argument, by its syntactic kind.
pub(crate) enum RawValue {
    /// `"20s"`
    Str(LitStr),
    /// `4`
    Int(LitInt),
    /// `true`
    Bool(syn::LitBool),
    /// `[SIGHUP, SIGUSR1]`; the span covers the brackets.
    List(Vec<Ident>, Span),
    /// `["/etc/app/config.toml", "/etc/tls/"]`; the span covers the brackets.
    Strings(Vec<LitStr>, Span),
}

impl RawValue {
    pub(crate) fn span(&self) -> Span {
        match self {
            RawValue::Str(s) => s.span(),
            RawValue::Int(i) => i.span(),
            RawValue::Bool(b) => b.span(),
            RawValue::List(_, span) | RawValue::Strings(_, span) => *span,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RawValue::Str(_) => "a string",
            RawValue::Int(_) => "an integer",
            RawValue::Bool(_) => "`true` or `false`",
            RawValue::List(..) => "a list of names",
            RawValue::Strings(..) => "a list of strings",
        }
    }
}

/// All arguments of `#[graceful::main(...)]`.
pub(crate) struct RawArgs(pub(crate) Vec<RawArg>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let args = Punctuated::<RawArg, Token![,]>::parse_terminated(input)?;
        Ok(RawArgs(args.into_iter().collect()))
    }
}

impl Parse for RawArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key: Ident = input.call(syn::ext::IdentExt::parse_any).map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected an option such as `stop_timeout = \"20s\"` or `reload = [SIGHUP]`",
            )
        })?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("`{key}` needs a value: write `{key} = ...`"),
            ));
        }
        input.parse::<Token![=]>()?;
        let lookahead = input.lookahead1();
        let value = if lookahead.peek(LitStr) {
            RawValue::Str(input.parse()?)
        } else if lookahead.peek(LitInt) {
            RawValue::Int(input.parse()?)
        } else if lookahead.peek(syn::LitBool) {
            RawValue::Bool(input.parse()?)
        } else if lookahead.peek(syn::token::Bracket) {
            let content;
            let brackets = bracketed!(content in input);
            if content.peek(LitStr) {
                let items = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                RawValue::Strings(items.into_iter().collect(), brackets.span.join())
            } else {
                let items = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                RawValue::List(items.into_iter().collect(), brackets.span.join())
            }
        } else {
            return Err(lookahead.error());
        };
        Ok(RawArg { key, value })
    }
}
