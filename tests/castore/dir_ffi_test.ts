/**
 * Byte-level directory access through libc (`src/castore/import/dir_ffi.ts`)
 * against python3's view of the same directories: names and targets as
 * bytes, lstat fields as Deno reports them, reads, errors, and the reason
 * given without FFI permission.
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import {
  displayName,
  RawDir,
  RawFsError,
  rawFsUnavailable,
  utf8Name,
} from "../../src/castore/import/dir_ffi.ts";
import { toHex } from "../../src/castore/digest.ts";

const te = new TextEncoder();
const fromHex = (h: string) => new Uint8Array(h.match(/../g)?.map((x) => parseInt(x, 16)) ?? []);

async function python(script: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
}

/** A temp dir holding byte-named entries (made by python3); removed after `fn`. */
async function withDir(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tvix-dir-ffi-" });
  try {
    await python(
      String.raw`
import os, sys
d = os.fsencode(sys.argv[1])
open(d + b"/f\xff", "wb").write(b"raw name contents")
open(d + b"/plain", "wb").write(b"x" * 100000)
os.chmod(d + b"/plain", 0o755)
os.mkdir(d + b"/sub\xfe")
open(d + b"/sub\xfe/in", "wb").write(b"inside")
os.symlink(b"target\x80", d + b"/link\xc3")
os.symlink(b"sub\xfe", d + b"/dirlink")
for i in range(2000):
    open(d + b"/many-%04d" % i, "wb").close()
`,
      dir,
    );
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("RawDir lists names as bytes, as python3 does, and again after a listing", () =>
  withDir(async (dir) => {
    const want = JSON.parse(
      await python(
        "import json,os,sys; print(json.dumps(sorted(n.hex() for n in os.listdir(os.fsencode(sys.argv[1])))))",
        dir,
      ),
    );
    using d = RawDir.open(dir);
    const got = d.names().map(toHex).sort();
    assertEquals(got.length, 2005);
    assertEquals(got, want);
    assertEquals(d.names().map(toHex).sort(), want);
    using sub = d.openDir(fromHex("737562fe"));
    assertEquals(sub.names().map(toHex), [toHex(te.encode("in"))]);
  }));

Deno.test("RawDir.lstat agrees with Deno.lstatSync; reads, links and errors", () =>
  withDir((dir) => {
    using d = RawDir.open(dir);
    for (const name of ["plain", "dirlink"]) {
      const deno = Deno.lstatSync(join(dir, name));
      const raw = d.lstat(te.encode(name));
      assertEquals(raw.mode, deno.mode, `mode of ${name}`);
      assertEquals(raw.dev, deno.dev, `dev of ${name}`);
      assertEquals(raw.ino, deno.ino, `ino of ${name}`);
      assertEquals(raw.size, deno.size, `size of ${name}`);
      assertEquals(raw.mtimeMs, deno.mtime!.getTime(), `mtime of ${name}`);
      // Deno rounds the ctime to seconds; ours keeps milliseconds.
      assertEquals(Math.floor(raw.ctimeMs / 1000) * 1000, deno.ctime!.getTime());
    }
    const raw = fromHex(toHex(te.encode("f")) + "ff");
    assertEquals(d.lstat(raw).size, 17);
    assertEquals(d.lstat(raw).mode & 0o170000, 0o100000);
    assertEquals(d.lstat(fromHex("737562fe")).mode & 0o170000, 0o040000);

    // Reads until the end, in pieces.
    {
      using f = d.openFile(raw);
      const buf = new Uint8Array(5);
      const pieces: number[] = [];
      let n;
      while ((n = f.readSync(buf)) !== null) pieces.push(n);
      assertEquals(pieces.reduce((a, b) => a + b, 0), 17);
    }
    // Symlink targets as bytes, relative to the directory and by path.
    const link = fromHex(toHex(te.encode("link")) + "c3");
    assertEquals(toHex(d.readLink(link)), toHex(te.encode("target")) + "80");
    assertEquals(toHex(RawDir.readLink(join(dir, "dirlink"))), toHex(te.encode("sub")) + "fe");

    // Symlinks are not followed, missing names fail with errno and escaped path.
    const loop = assertThrows(() => d.openFile(te.encode("dirlink")), RawFsError);
    assertEquals(loop.errno, 40);
    assertThrows(() => d.openDir(te.encode("dirlink")), RawFsError);
    const missing = assertThrows(() => d.lstat(fromHex("6e6f7065ff")), RawFsError);
    assertEquals(missing.errno, 2);
    assert(missing.message.includes(`${dir}/nope\\xff`), missing.message);
    assert(missing.message.includes("No such file or directory"), missing.message);
    assertThrows(() => RawDir.open(join(dir, "does-not-exist")), RawFsError);
    d.close();
    assertThrows(() => d.names(), RawFsError);
  }));

Deno.test("utf8Name keeps a byte order mark; displayName escapes what is not UTF-8", () => {
  assertEquals(utf8Name(fromHex("efbbbf61")), "\uFEFFa");
  assertEquals(utf8Name(fromHex("ff")), undefined);
  assertEquals(displayName(te.encode("ünï ok")), "ünï ok");
  assertEquals(displayName(fromHex("c328646972")), "\\xc3(dir");
  assertEquals(displayName(fromHex("5cff0a")), "\\x5c\\xff\\x0a");
});

Deno.test("utf8Name spells ASCII names of every length, and views, as the decoder does", () => {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  // 255 bytes is the longest the ASCII path takes; 256 goes to the decoder.
  for (const length of [0, 1, 254, 255, 256, 1000]) {
    const name = te.encode("a.-_~\x7f\x01Z9".repeat(100).slice(0, length));
    assertEquals(utf8Name(name), decoder.decode(name), `length ${length}`);
  }
  const whole = te.encode("dir/some-name.txt");
  assertEquals(utf8Name(whole.subarray(4, 13)), "some-name");
  assertEquals(utf8Name(te.encode("caf\u00e9")), "café", "non-ASCII takes the decoder");
  assertEquals(utf8Name(fromHex("61ff")), undefined, "a bad byte after ASCII ones");
});

Deno.test("without FFI permission, rawFsUnavailable says so", async () => {
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    const mod = new URL("../../src/castore/import/dir_ffi.ts", import.meta.url).href;
    await Deno.writeTextFile(
      script,
      `import { rawFsUnavailable } from ${JSON.stringify(mod)};\n` +
        "console.log(rawFsUnavailable());\n",
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--quiet", "--no-prompt", "--allow-read", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert(out.success, new TextDecoder().decode(out.stderr));
    assert(text.includes("--allow-ffi"), text);
    assertEquals(rawFsUnavailable(), undefined, "this test process has FFI");
  } finally {
    await Deno.remove(script);
  }
});
