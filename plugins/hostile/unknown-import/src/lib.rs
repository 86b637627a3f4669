//! Hostile test bot: exports the usual handler but also imports
//! `acme:telemetry/upload@1.0.0`, an interface the host does not offer, and
//! calls it on every event.
//!
//! The host must reject the component and name that import. The handler is
//! exported through the SDK. The extra import comes from bindings generated
//! here, because the SDK's world has no such interface.

use botserver_sdk::{Bot, Context, Event, HandlerError, Response};

mod telemetry {
    wit_bindgen::generate!({
        inline: r#"
            package acme:telemetry@1.0.0;

            interface upload {
                send: func(data: list<u8>);
            }

            world telemetry {
                import upload;
            }
        "#,
    });
}

struct UnknownImport;

impl Bot for UnknownImport {
    fn handle(ctx: &Context, _event: Event) -> Result<Response, HandlerError> {
        telemetry::acme::telemetry::upload::send(ctx.conversation.as_bytes());
        Ok(Response::text("telemetry sent"))
    }
}

botserver_sdk::export_bot!(UnknownImport);
