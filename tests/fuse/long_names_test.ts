/**
 * A castore directory may hold names longer than any path can: the mount
 * leaves them out of listings instead of failing the whole listing (the
 * kernel rejects a READDIR reply with a name over 1024 bytes), and lists
 * the other entries. A real mount; runs as root where /dev/fuse exists.
 */
import { assertEquals } from "../assert.ts";
import { makeNode } from "../../src/castore/node.ts";
import { directoryDigest, directorySize } from "../../src/castore/directory.ts";
import { encode as nixbase32 } from "../../src/store/nixbase32.ts";
import { SKIP, startMount, tempStore } from "./harness.ts";

Deno.test({
  name: "mount: names longer than NAME_MAX are left out of a listing, which lists the rest",
  ignore: SKIP,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const store = await tempStore();
  const enc = new TextEncoder();
  let mount;
  try {
    const svc = await store.open();
    const directory = {
      directories: [],
      files: [],
      symlinks: [
        { name: enc.encode("a"), target: enc.encode("x") },
        { name: enc.encode("b".repeat(300)), target: enc.encode("x") },
        { name: enc.encode("c".repeat(1100)), target: enc.encode("x") },
        { name: enc.encode("d"), target: enc.encode("x") },
      ],
    };
    const name = `${nixbase32(new Uint8Array(20).fill(7))}-long-names`;
    try {
      await svc.directory.put(directory);
      const node = makeNode.directory(
        enc.encode(name),
        directoryDigest(directory),
        directorySize(directory),
      );
      await svc.pathInfo.put({ node: { node }, references: [], narinfo: undefined });
    } finally {
      await svc.close();
    }
    mount = await startMount({ addrs: store.addrs, args: ["--threads=2"] });
    const listed = [];
    for await (const e of Deno.readDir(`${mount.mountpoint}/${name}`)) listed.push(e.name);
    assertEquals(listed.sort(), ["a", "d"]);
    assertEquals(await Deno.readLink(`${mount.mountpoint}/${name}/d`), "x");
  } finally {
    await mount?.stop();
    await store.remove();
  }
});
