//! Host bindings generated from `wit/bot.wit`.
//!
//! Only the types and the exported `handler` are used from here: the
//! capability modules link their imports by hand, so that each host call can
//! check its grant, count its bytes and charge fuel with the store at hand.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
    with: {
        "botserver:bot/secrets.secret": crate::capabilities::secrets::SecretHandle,
    },
});
