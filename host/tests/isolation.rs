//! The sandbox under the engine configuration every plugin runs with.
//! Instances from the pooling allocator start clean: a canary written by one
//! instance into linear memory (including grown pages) and a mutable global
//! is never visible to the next instance that reuses the slot. Accesses past
//! the end of linear memory trap, however the address is formed.

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

const BOUNDS_COMPONENT: &str = r#"
(component
  (core module $m
    (memory 1)
    (func (export "load") (param i32) (result i32)
      (i32.load (local.get 0)))
    (func (export "load-far") (param i32) (result i32)
      (i32.load offset=0xfffffff0 (local.get 0)))
    (func (export "store-wrapped") (param i32) (result i32)
      (i32.store (i32.add (local.get 0) (i32.const 0x7fffffff)) (i32.const 1))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func (export "load") (param "addr" u32) (result u32) (canon lift (core func $i "load")))
  (func (export "load-far") (param "addr" u32) (result u32) (canon lift (core func $i "load-far")))
  (func (export "store-wrapped") (param "addr" u32) (result u32)
    (canon lift (core func $i "store-wrapped")))
)
"#;

async fn call_with(
    engine: &Engine,
    component: &Component,
    name: &str,
    arg: u32,
) -> wasmtime::Result<u32> {
    let linker = Linker::<()>::new(engine);
    let mut store = Store::new(engine, ());
    store.set_fuel(1_000_000)?;
    store.set_epoch_deadline(1_000);
    let instance = linker.instantiate_async(&mut store, component).await?;
    let func = instance.get_typed_func::<(u32,), (u32,)>(&mut store, name)?;
    Ok(func.call_async(&mut store, (arg,)).await?.0)
}

#[tokio::test]
async fn out_of_bounds_accesses_trap_and_the_host_lives() -> wasmtime::Result<()> {
    let engine = Engine::new(&engine_config(1))?;
    let component = Component::new(&engine, BOUNDS_COMPONENT)?;
    let cases = [
        ("load", 65_533),
        ("load", 65_536),
        ("load", 0xffff_fffc),
        // The effective address 0x20 + 0xfffffff0 must not wrap to 0x10.
        ("load-far", 0x20),
        ("store-wrapped", 0x10),
    ];
    for (name, addr) in cases {
        let error = call_with(&engine, &component, name, addr)
            .await
            .err()
            .unwrap_or_else(|| panic!("`{name}({addr:#x})` did not trap"));
        assert_eq!(
            error.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::MemoryOutOfBounds),
            "`{name}({addr:#x})`: {error}"
        );
    }
    // The last valid word still reads.
    assert_eq!(call_with(&engine, &component, "load", 65_532).await?, 0);
    Ok(())
}
