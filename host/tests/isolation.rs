//! Instances from the pooling allocator start clean: a canary written by one
//! instance into linear memory (including grown pages) and a mutable global
//! is never visible to the next instance that reuses the slot.

use botserver::runtime::engine::engine_config;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

const CANARY_COMPONENT: &str = r#"
(component
  (core module $m
    (memory (export "memory") 2)
    (global $g (mut i32) (i32.const 0))
    (func (export "write") (result i32)
      (local $addr i32)
      (drop (memory.grow (i32.const 2)))
      (local.set $addr (i32.const 0))
      (block $done
        (loop $fill
          (br_if $done (i32.ge_u (local.get $addr) (i32.mul (memory.size) (i32.const 65536))))
          (i32.store (local.get $addr) (i32.const 0x5ec12e75))
          (local.set $addr (i32.add (local.get $addr) (i32.const 64)))
          (br $fill)))
      (global.set $g (i32.const 0x5ec12e75))
      (memory.size))
    (func (export "scan") (result i32)
      (local $addr i32)
      (local $found i32)
      (if (i32.eq (global.get $g) (i32.const 0x5ec12e75)) (then (local.set $found (i32.const 1))))
      (block $done
        (loop $look
          (br_if $done (i32.ge_u (local.get $addr) (i32.mul (memory.size) (i32.const 65536))))
          (if (i32.eq (i32.load (local.get $addr)) (i32.const 0x5ec12e75))
            (then (local.set $found (i32.add (local.get $found) (i32.const 1)))))
          (local.set $addr (i32.add (local.get $addr) (i32.const 4)))
          (br $look)))
      (i32.add (local.get $found) (i32.mul (memory.size) (i32.const 1000))))
  )
  (core instance $i (instantiate $m))
  (func (export "write") (result u32) (canon lift (core func $i "write")))
  (func (export "scan") (result u32) (canon lift (core func $i "scan")))
)
"#;

async fn call(engine: &Engine, component: &Component, name: &str) -> wasmtime::Result<u32> {
    let linker = Linker::<()>::new(engine);
    let mut store = Store::new(engine, ());
    store.set_fuel(100_000_000)?;
    store.set_epoch_deadline(1_000);
    let instance = linker.instantiate_async(&mut store, component).await?;
    let func = instance.get_typed_func::<(), (u32,)>(&mut store, name)?;
    let (result,) = func.call_async(&mut store, ()).await?;
    Ok(result)
}

#[tokio::test]
async fn pooled_instances_never_see_a_previous_canary() -> wasmtime::Result<()> {
    // One slot, so every instantiation reuses the same memory and globals.
    let engine = Engine::new(&engine_config(1))?;
    let component = Component::new(&engine, CANARY_COMPONENT)?;
    for _ in 0..5 {
        let pages = call(&engine, &component, "write").await?;
        assert_eq!(pages, 4, "the writer grows its memory to four pages");
        let scan = call(&engine, &component, "scan").await?;
        assert_eq!(
            scan,
            2 * 1000,
            "a fresh instance has two pages and no canary"
        );
    }
    Ok(())
}
