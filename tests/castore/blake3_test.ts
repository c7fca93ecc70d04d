/**
 * The two BLAKE3 implementations (native addon and hash-wasm fallback) give
 * the same digests as each other and as `b3sum`, one-shot and streamed in
 * pieces split at odd boundaries; `TVIX_BLAKE3=wasm` selects the fallback.
 */
import { assert, assertEquals } from "../assert.ts";
import {
  type Blake3Implementation,
  blake3Implementation,
  nativeBlake3,
  toHex,
  wasmBlake3,
} from "../../src/castore/digest.ts";
import { pseudoRandom } from "../fixtures.ts";

const SIZES = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2049, 4096, 65_537, (1 << 20) + 7, 3 << 20];

async function implementations(): Promise<Blake3Implementation[]> {
  assert(nativeBlake3, "the native BLAKE3 addon does not load on this machine");
  return [nativeBlake3, await wasmBlake3()];
}

async function b3sum(data: Uint8Array): Promise<string> {
  const child = new Deno.Command("b3sum", {
    args: ["--no-names"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(data);
  await writer.close();
  const out = await child.output();
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test("blake3: native is the implementation in use here", () => {
  assertEquals(blake3Implementation.name, "native");
});

Deno.test("blake3: native, wasm and b3sum agree one-shot", async () => {
  for (const size of SIZES) {
    const data = pseudoRandom(size, 7 + size);
    const want = await b3sum(data);
    for (const impl of await implementations()) {
      assertEquals(toHex(impl.hash(data)), want, `${impl.name}, ${size} bytes`);
    }
  }
});

Deno.test("blake3: streamed in pieces split at odd boundaries equals one-shot", async () => {
  // Piece lengths from their own deterministic stream, so failures reproduce.
  const lengths = pseudoRandom(1 << 16, 11);
  let li = 0;
  for (const size of SIZES) {
    const data = pseudoRandom(size, 11 + size);
    const want = toHex((await wasmBlake3()).hash(data));
    for (const impl of await implementations()) {
      for (const pieces of ["ones-then-rest", "random"]) {
        const h = await impl.hasher();
        let at = 0;
        while (at < size) {
          const n = pieces === "ones-then-rest"
            ? (at < 70 ? 1 : size - at)
            : 1 + ((lengths[li++ % lengths.length] << 5) | (li % 32));
          h.update(data.subarray(at, Math.min(size, at + n)));
          at += n;
        }
        assertEquals(toHex(h.digest()), want, `${impl.name}, ${size} bytes, ${pieces}`);
      }
    }
  }
});

Deno.test("blake3: a hasher cannot be used after digest()", async () => {
  for (const impl of await implementations()) {
    const h = await impl.hasher();
    h.update(new Uint8Array([1]));
    h.digest();
    let threw = false;
    try {
      h.update(new Uint8Array([2]));
    } catch {
      threw = true;
    }
    assert(threw, `${impl.name} accepted update() after digest()`);
  }
});

Deno.test("blake3: TVIX_BLAKE3=wasm forces the fallback", async () => {
  const probe = `import { blake3Implementation } from "${
    new URL("../../src/castore/digest.ts", import.meta.url).href
  }"; console.log(blake3Implementation.name);`;
  for (const [env, want] of [[{}, "native"], [{ TVIX_BLAKE3: "wasm" }, "wasm"]] as const) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--config", new URL("../../deno.json", import.meta.url).pathname, probe],
      // Only the switch under test, whatever the runner's environment says.
      env: { PATH: Deno.env.get("PATH") ?? "", HOME: Deno.env.get("HOME") ?? "", ...env },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    assertEquals(dec.decode(out.stdout).trim(), want, dec.decode(out.stderr));
  }
});
