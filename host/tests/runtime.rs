//! The plugin runtime as a library: isolation between events, revocation,
//! and memory over many events.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use botserver::capabilities::http::SystemResolver;
use botserver::capabilities::kv::FileKvStore;
use botserver::capabilities::secrets::MemorySecretStore;
use botserver::capabilities::{Capability, GrantSet, LiveGrants};
use botserver::runtime::limits::InvocationLimits;
use botserver::runtime::{
    Event, EventContext, InvocationError, PluginRuntime, PreparedPlugin, RuntimeConfig, Services,
    UserMessage,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn load(
    runtime: &PluginRuntime,
    name: &str,
    grants: &GrantSet,
) -> Result<PreparedPlugin, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(support::plugin(name))?;
    let compiled = runtime.compile(&bytes)?;
    Ok(runtime.prepare(&compiled, grants)?)
}

fn services(grants: Arc<LiveGrants>, kv: Arc<FileKvStore>) -> Services {
    Services {
        grants,
        kv,
        secrets: Arc::new(MemorySecretStore::default()),
        config: Arc::new(BTreeMap::new()),
        resolver: Arc::new(SystemResolver),
    }
}

fn context(tenant: &str, user: &str) -> EventContext {
    EventContext {
        tenant: tenant.to_owned(),
        bot: "bot".to_owned(),
        conversation: "c1".to_owned(),
        user: user.to_owned(),
        locale: "en".to_owned(),
    }
}

fn message(text: &str) -> Event {
    Event::UserMessage(UserMessage {
        text: text.to_owned(),
        attributes: Vec::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_kv_grant_is_denied_at_the_next_host_call() -> TestResult {
    let runtime = PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 4,
    })?;
    let mut grants = GrantSet::default();
    grants.add_flag("kv")?;
    let plugin = load(&runtime, "counter", &grants)?;
    let live = LiveGrants::new(grants);
    let kv = Arc::new(FileKvStore::in_memory());

    let first = runtime
        .invoke(
            &plugin,
            services(Arc::clone(&live), Arc::clone(&kv)),
            InvocationLimits::default(),
            context("t", "u"),
            message("+1"),
        )
        .await?;
    assert_eq!(first.response.replies[0].text, "1");

    live.revoke(Capability::Kv);
    let denied = runtime
        .invoke(
            &plugin,
            services(Arc::clone(&live), kv),
            InvocationLimits::default(),
            context("t", "u"),
            message("+1"),
        )
        .await;
    let failed = denied.err().ok_or("the revoked grant was still honoured")?;
    assert!(
        matches!(failed.error, InvocationError::Handler(_)),
        "{}",
        failed.error
    );
    assert_eq!(failed.denials.len(), 1);
    assert_eq!(failed.denials[0].capability, Capability::Kv);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tenants_do_not_share_counters() -> TestResult {
    let runtime = PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 4,
    })?;
    let mut grants = GrantSet::default();
    grants.add_flag("kv")?;
    let plugin = load(&runtime, "counter", &grants)?;
    let live = LiveGrants::new(grants);
    let kv = Arc::new(FileKvStore::in_memory());
    let mut seen = Vec::new();
    for (tenant, user) in [("a", "u1"), ("a", "u1"), ("a", "u2"), ("b", "u1")] {
        let outcome = runtime
            .invoke(
                &plugin,
                services(Arc::clone(&live), Arc::clone(&kv)),
                InvocationLimits::default(),
                context(tenant, user),
                message("+1"),
            )
            .await?;
        seen.push(outcome.response.replies[0].text.clone());
    }
    assert_eq!(seen, ["1", "2", "1", "1"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_do_not_stop_a_good_one() -> TestResult {
    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 16,
    })?);
    let none = GrantSet::default();
    let echo = load(&runtime, "echo", &none)?;
    let spin = load(&runtime, "spin-loop", &none)?;
    let bomb = load(&runtime, "memory-bomb", &none)?;
    let live = LiveGrants::new(none);
    let kv = Arc::new(FileKvStore::in_memory());

    let mut hostile = Vec::new();
    for plugin in [spin.clone(), bomb.clone(), spin, bomb] {
        let (runtime, services) = (
            Arc::clone(&runtime),
            services(Arc::clone(&live), Arc::clone(&kv)),
        );
        let limits = InvocationLimits {
            fuel: 1_000_000_000_000,
            deadline_ms: 1_000,
            ..InvocationLimits::default()
        };
        hostile.push(tokio::spawn(async move {
            runtime
                .invoke(
                    &plugin,
                    services,
                    limits,
                    context("tenant-a", "u"),
                    message("x"),
                )
                .await
        }));
    }
    for i in 0..20 {
        let text = format!("message {i}");
        let outcome = runtime
            .invoke(
                &echo,
                services(Arc::clone(&live), Arc::clone(&kv)),
                InvocationLimits::default(),
                context("tenant-b", "u"),
                message(&text),
            )
            .await?;
        assert_eq!(outcome.response.replies[0].text, text);
    }
    for task in hostile {
        let failed = task.await?.err().ok_or("a hostile plugin succeeded")?;
        assert!(
            matches!(
                failed.error,
                InvocationError::DeadlineExceeded { .. } | InvocationError::MemoryLimit { .. }
            ),
            "{}",
            failed.error
        );
    }
    Ok(())
}
