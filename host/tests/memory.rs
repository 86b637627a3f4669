//! Host memory over many events against one loaded plugin. A test binary of
//! its own, so that no other test's allocations move the measurement.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use botserver::capabilities::http::SystemResolver;
use botserver::capabilities::kv::FileKvStore;
use botserver::capabilities::secrets::MemorySecretStore;
use botserver::capabilities::{GrantSet, LiveGrants};
use botserver::runtime::limits::InvocationLimits;
use botserver::runtime::{
    Event, EventContext, PluginRuntime, RuntimeConfig, Services, UserMessage,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
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

fn context() -> EventContext {
    EventContext {
        tenant: "t".to_owned(),
        bot: "bot".to_owned(),
        conversation: "c1".to_owned(),
        user: "u".to_owned(),
        locale: "en".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_leave_memory_flat() -> TestResult {
    let runtime = PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 4,
    })?;
    let none = GrantSet::default();
    let bytes = std::fs::read(support::plugin("echo"))?;
    let compiled = runtime.compile(&bytes)?;
    let echo = runtime.prepare(&compiled, &none)?;
    let live = LiveGrants::new(none);
    let kv = Arc::new(FileKvStore::in_memory());
    let run = async |count: usize| -> TestResult {
        for i in 0..count {
            let text = format!("event {i}");
            let outcome = runtime
                .invoke(
                    &echo,
                    services(Arc::clone(&live), Arc::clone(&kv)),
                    InvocationLimits::default(),
                    context(),
                    Event::UserMessage(UserMessage {
                        text: text.clone(),
                        attributes: Vec::new(),
                    }),
                )
                .await?;
            assert_eq!(outcome.response.replies[0].text, text);
        }
        Ok(())
    };
    run(1_000).await?;
    let warm = resident_bytes();
    run(9_000).await?;
    let after = resident_bytes();
    let growth = after.saturating_sub(warm);
    assert!(
        growth < 16 * 1024 * 1024,
        "resident memory grew by {growth} bytes over 9,000 events"
    );
    Ok(())
}
