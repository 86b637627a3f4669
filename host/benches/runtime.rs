//! Per-event latency of the plugin runtime next to plain wasmtime.
//!
//! Run with `scripts/bench`. Both loops instantiate the `echo` plugin fresh
//! for every event from a pre-instantiated component on the same engine
//! configuration (pooling allocator, fuel, epoch deadline with its ticker
//! thread), and both count the release of the instance slot. The plain loop
//! has none of the host logic: no grants, no call hook, no store limiter,
//! no output capture. Results go to `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use botserver::capabilities::http::SystemResolver;
use botserver::capabilities::kv::FileKvStore;
use botserver::capabilities::secrets::MemorySecretStore;
use botserver::capabilities::{GrantSet, LiveGrants};
use botserver::runtime::bindings::botserver::bot::logging::Level;
use botserver::runtime::bindings::{Plugin, PluginPre};
use botserver::runtime::engine::engine_config;
use botserver::runtime::limits::InvocationLimits;
use botserver::runtime::{
    Event, EventContext, PluginRuntime, RuntimeConfig, Services, UserMessage,
};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const WARMUP: usize = 500;
const EVENTS: usize = 5_000;

struct PlainState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for PlainState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn context() -> EventContext {
    EventContext {
        tenant: "bench".into(),
        bot: "echo".into(),
        conversation: "c".into(),
        user: "u".into(),
        locale: "en".into(),
    }
}

fn event(i: usize) -> Event {
    Event::UserMessage(UserMessage {
        text: format!("message {i}"),
        attributes: Vec::new(),
    })
}

struct Summary {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let total: Duration = samples.iter().sum();
    let at = |percent: usize| samples[(samples.len() - 1) * percent / 100];
    let count = u32::try_from(samples.len()).unwrap_or(u32::MAX);
    Summary {
        mean: total / count,
        p50: at(50),
        p99: at(99),
    }
}

async fn host_loop(bytes: &[u8]) -> Result<Summary, Box<dyn std::error::Error>> {
    let runtime = PluginRuntime::new(RuntimeConfig {
        concurrent_instances: 4,
    })?;
    let grants = GrantSet::default();
    let compiled = runtime.compile(bytes)?;
    let plugin = runtime.prepare(&compiled, &grants)?;
    let services = Services {
        grants: LiveGrants::new(grants),
        kv: Arc::new(FileKvStore::in_memory()),
        secrets: Arc::new(MemorySecretStore::default()),
        config: Arc::new(BTreeMap::new()),
        resolver: Arc::new(SystemResolver),
    };
    let mut samples = Vec::with_capacity(EVENTS);
    for i in 0..WARMUP + EVENTS {
        let started = Instant::now();
        let outcome = runtime
            .invoke(
                &plugin,
                services.clone(),
                InvocationLimits::default(),
                context(),
                event(i),
            )
            .await?;
        let elapsed = started.elapsed();
        assert_eq!(outcome.response.replies.len(), 1);
        if i >= WARMUP {
            samples.push(elapsed);
        }
    }
    Ok(summarize(samples))
}

async fn plain_loop(bytes: &[u8]) -> Result<Summary, Box<dyn std::error::Error>> {
    let engine = Engine::new(&engine_config(4))?;
    let _ticker = botserver::runtime::engine::EpochTicker::start(&engine)?;
    let component = Component::new(&engine, bytes)?;
    let mut linker = Linker::<PlainState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    linker.instance("botserver:bot/types@0.1.0")?;
    let mut logging = linker.instance("botserver:bot/logging@0.1.0")?;
    logging.func_wrap("log", |_store, (_level, _message): (Level, String)| Ok(()))?;
    let pre = PluginPre::new(linker.instantiate_pre(&component)?)?;
    let limits = InvocationLimits::default();
    let mut samples = Vec::with_capacity(EVENTS);
    for i in 0..WARMUP + EVENTS {
        let started = Instant::now();
        let state = PlainState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&engine, state);
        store.set_fuel(limits.fuel)?;
        store.set_epoch_deadline(1_000);
        let plugin: Plugin = pre.instantiate_async(&mut store).await?;
        let response = plugin
            .botserver_bot_handler()
            .call_handle(&mut store, &context(), &event(i))
            .await?
            .map_err(|e| format!("{e:?}"))?;
        // Releasing the instance slot is part of every event, as in the
        // runtime, which drops its store before returning.
        drop(store);
        let elapsed = started.elapsed();
        assert_eq!(response.replies.len(), 1);
        if i >= WARMUP {
            samples.push(elapsed);
        }
    }
    Ok(summarize(samples))
}

fn micros(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bytes = std::fs::read(target.join("plugins/echo.wasm")).map_err(|e| {
        format!("failed to read target/plugins/echo.wasm ({e}); run scripts/build-plugins")
    })?;

    // Alternate the two loops so that both see the same machine state.
    let plain_first = plain_loop(&bytes).await?;
    let host = host_loop(&bytes).await?;
    let plain_second = plain_loop(&bytes).await?;
    let plain = if plain_first.mean <= plain_second.mean {
        plain_first
    } else {
        plain_second
    };
    let ratio = host.mean.as_secs_f64() / plain.mean.as_secs_f64();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let table = format!(
        "| loop | mean (us) | p50 (us) | p99 (us) |\n|---|---|---|---|\n| BotServer runtime | {} | {} | {} |\n| plain wasmtime | {} | {} | {} |\n\nRatio of means: **{ratio:.2}x** (aim: at most 1.2x).\n\nMeasured {EVENTS} events after {WARMUP} warm-up events, fresh instance per event, `echo` plugin, on {cores} cores of {cpu}, profile `{}`.\n",
        micros(host.mean),
        micros(host.p50),
        micros(host.p99),
        micros(plain.mean),
        micros(plain.p50),
        micros(plain.p99),
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
    );
    println!("{table}");
    if let Some(path) = std::env::var_os("BOTSERVER_BENCH_OUTPUT") {
        std::fs::write(path, table)?;
    }
    Ok(())
}
