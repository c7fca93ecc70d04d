/**
 * `<hash>.ls` files: the JSON listing of a NAR that Nix writes next to a
 * binary cache's NARs with `write-nar-listing=true`, computed here from
 * castore without rendering the NAR.
 *
 * The layout is version 1: `{"version":1,"root":NODE}`, where a NODE is
 * `{"type":"directory","entries":{NAME:NODE,…}}` (entries in NAR order),
 * `{"type":"regular","size":N[,"executable":true],"narOffset":N}` or
 * `{"type":"symlink","target":T}`, keys in that order, no whitespace, no
 * trailing newline, the way Nix 2.8 writes it (checked byte for byte
 * against `nix copy --to 'file://…?write-nar-listing=true'`, which stores it
 * uncompressed). `narOffset` is where the file's contents start in the NAR;
 * it follows from the NAR encoding (docs/compatibility.md#nar-encoding):
 * every token is a length word plus its bytes padded to 8, so each offset is
 * a sum of token lengths and earlier file sizes.
 *
 * @module
 */
import type { DirectoryService } from "../castore/directory/service.ts";
import { type Directory, directoryDigest, directoryNodes } from "../castore/directory.ts";
import { b3Display, concatBytes, digestKey } from "../castore/digest.ts";
import type { NodeVariant } from "../castore/node.ts";
import { StorageError } from "../errors.ts";
import { padLen, TOK } from "../nar/wire.ts";

const encoder = new TextEncoder();

/** Length of `str(b)` in a NAR: a length word, the bytes, padding to 8. */
function strLen(len: number): number {
  return 8 + len + padLen(len);
}

/**
 * A JSON string of raw bytes, escaped as Nix escapes it: `"` and `\`,
 * `\n`, `\r`, `\t`, other bytes below 0x20 as `\u00XX`, every other byte
 * as it is (names are bytes, usually UTF-8).
 */
function jsonString(bytes: Uint8Array): Uint8Array {
  const out: number[] = [0x22];
  for (const b of bytes) {
    if (b === 0x22 || b === 0x5c) out.push(0x5c, b);
    else if (b === 0x0a) out.push(0x5c, 0x6e);
    else if (b === 0x0d) out.push(0x5c, 0x72);
    else if (b === 0x09) out.push(0x5c, 0x74);
    else if (b < 0x20) out.push(...encoder.encode(`\\u${b.toString(16).padStart(4, "0")}`));
    else out.push(b);
  }
  out.push(0x22);
  return Uint8Array.from(out);
}

/** Builds the listing's bytes while tracking the NAR offset the walk has reached. */
class ListingWriter {
  readonly parts: Uint8Array[] = [];
  /** NAR offset: after the `"(" "type"` of the node being listed. */
  offset = TOK.header.length;

  constructor(readonly dirs: Map<string, Directory>) {}

  text(s: string): void {
    this.parts.push(encoder.encode(s));
  }

  node(node: NodeVariant): void {
    switch (node.$case) {
      case "symlink": {
        const target = node.value.target;
        this.text('{"type":"symlink","target":');
        this.parts.push(jsonString(target));
        this.text("}");
        this.offset += TOK.symlink.length + strLen(target.length);
        break;
      }
      case "file": {
        const { size, executable } = node.value;
        this.offset += (executable ? TOK.executable : TOK.regular).length + 8;
        this.text(
          `{"type":"regular","size":${size}${executable ? ',"executable":true' : ""}` +
            `,"narOffset":${this.offset}}`,
        );
        this.offset += Number(size) + padLen(Number(size));
        break;
      }
      case "directory": {
        const d = this.dirs.get(digestKey(node.value.digest));
        if (!d) {
          throw new StorageError(`directory ${b3Display(node.value.digest)} not found`);
        }
        this.offset += TOK.directory.length;
        this.text('{"type":"directory","entries":{');
        let first = true;
        for (const child of directoryNodes(d)) {
          if (!first) this.text(",");
          first = false;
          this.parts.push(jsonString(child.value.name));
          this.text(":");
          this.offset += TOK.entryOpen.length + strLen(child.value.name.length) +
            TOK.nodeOpen.length;
          this.node(child);
          this.offset += TOK.close.length; // closes the entry
        }
        this.text("}}");
        break;
      }
    }
    this.offset += TOK.close.length; // closes the node
  }
}

/**
 * The `.ls` listing of the NAR of `root`, as Nix writes it. Reads the
 * directory closure with one `getRecursive`; no blob is read.
 */
export async function narListing(
  root: NodeVariant,
  directories: Pick<DirectoryService, "getRecursive">,
): Promise<Uint8Array> {
  const dirs = new Map<string, Directory>();
  if (root.$case === "directory") {
    for await (const d of directories.getRecursive(root.value.digest)) {
      dirs.set(digestKey(directoryDigest(d)), d);
    }
  }
  const w = new ListingWriter(dirs);
  w.text('{"version":1,"root":');
  w.node(root);
  w.text("}");
  return concatBytes(w.parts);
}
